"""insession: real-time, in-session adaptive recommendations that are fast, stable and reproducible."""

from insession.events import Event, EventType, parse_event
from insession.pipeline import RecommendRequest, RecommendResponse
from insession.sessions import SessionState, apply

__version__ = "0.1.0"

__all__ = [
    "Event",
    "EventType",
    "RecommendRequest",
    "RecommendResponse",
    "SessionState",
    "__version__",
    "apply",
    "parse_event",
]
