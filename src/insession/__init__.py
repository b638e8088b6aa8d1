"""insession: real-time, in-session adaptive recommendations that are fast, stable and reproducible.

The Python API in five names::

    from insession import Engine, Settings, load_events, train, RecommendRequest

    events = list(load_events("export.csv", mapping=DataMapping.from_options("user_id=customer,item_id=sku")))
    model = train(events)                                   # a ModelBundle; model.save(path) to keep it
    engine = Engine.open(Settings(data_dir=Path("state")), model=model)
    engine.ingest_all(events)                               # the history: validated, logged, folded
    response = engine.recommend(RecommendRequest("u1", "home", 10))
    engine.explain(response.request_id).identical           # True: the list recomputed from the log
    engine.close()

Names load on first use, so ``import insession`` stays light (no LightGBM until a model is used).
See the README's "Python API" section for more.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "Engine": "insession.engine",
    "BulkResult": "insession.engine",
    "IngestResult": "insession.engine",
    "ItemsResult": "insession.engine",
    "Settings": "insession.config",
    "SessionConfig": "insession.config",
    "SurfaceConfig": "insession.config",
    "DataMapping": "insession.datasets.mapping",
    "load_events": "insession.datasets.loaders",
    "read_events": "insession.datasets.loaders",
    "load_items": "insession.datasets.loaders",
    "LoadStats": "insession.datasets.table",
    "train": "insession.training",
    "TrainConfig": "insession.training",
    "ModelBundle": "insession.model",
    "Event": "insession.events",
    "EventType": "insession.events",
    "parse_event": "insession.events",
    "validate_event": "insession.events",
    "check_event": "insession.events",
    "Item": "insession.catalog",
    "Filters": "insession.filters",
    "RecommendRequest": "insession.pipeline",
    "RecommendResponse": "insession.pipeline",
    "RecommendedItem": "insession.pipeline",
    "Explanation": "insession.explain",
    "SessionState": "insession.sessions",
    "apply": "insession.sessions",
    "InsessionError": "insession.errors",
    "ValidationError": "insession.errors",
    "FieldError": "insession.errors",
}

__all__ = [
    "BulkResult",
    "DataMapping",
    "Engine",
    "Event",
    "EventType",
    "Explanation",
    "FieldError",
    "Filters",
    "IngestResult",
    "InsessionError",
    "Item",
    "ItemsResult",
    "LoadStats",
    "ModelBundle",
    "RecommendRequest",
    "RecommendResponse",
    "RecommendedItem",
    "SessionConfig",
    "SessionState",
    "Settings",
    "SurfaceConfig",
    "TrainConfig",
    "ValidationError",
    "__version__",
    "apply",
    "check_event",
    "load_events",
    "load_items",
    "parse_event",
    "read_events",
    "train",
    "validate_event",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'insession' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and editors; at run time the names load on first use
    from insession.catalog import Item
    from insession.config import SessionConfig, Settings, SurfaceConfig
    from insession.datasets.loaders import load_events, load_items, read_events
    from insession.datasets.mapping import DataMapping
    from insession.datasets.table import LoadStats
    from insession.engine import BulkResult, Engine, IngestResult, ItemsResult
    from insession.errors import FieldError, InsessionError, ValidationError
    from insession.events import Event, EventType, check_event, parse_event, validate_event
    from insession.explain import Explanation
    from insession.filters import Filters
    from insession.model import ModelBundle
    from insession.pipeline import RecommendedItem, RecommendRequest, RecommendResponse
    from insession.sessions import SessionState, apply
    from insession.training import TrainConfig, train
