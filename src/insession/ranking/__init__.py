"""Ranking: score merged candidates."""
