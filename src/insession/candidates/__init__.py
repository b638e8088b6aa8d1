"""Candidate generation: each source proposes items with a score and is tagged by name."""

from insession.candidates.base import Candidate, CandidateSource, RequestContext

__all__ = ["Candidate", "CandidateSource", "RequestContext"]
