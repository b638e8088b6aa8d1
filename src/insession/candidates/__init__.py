"""Candidate generation: each source proposes items with a score and is tagged by name."""
