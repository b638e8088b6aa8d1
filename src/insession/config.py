"""Configuration: frozen dataclasses validated on construction, and one ``Settings`` object.

``Settings.load`` is the only place that reads the environment (prefix ``INSESSION_``) or a
TOML file; everything else receives its configuration as an argument.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from insession.clock import MINUTE_MS
from insession.datasets.mapping import DataMapping
from insession.errors import FieldError, ValidationError, describe
from insession.redis_backend import is_redis_url

Freshness = Literal["realtime", "session", "batch"]


def _require(ok: bool, field_name: str, expected: str, got: object) -> None:
    if not ok:
        raise ValidationError([FieldError(field_name, expected, describe(got))])


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How events fold into sessions.

    A new session starts when ``timeout_ms`` or more of event time passes between two events of
    a user (or when the client sends a different ``session_id``).
    """

    timeout_ms: int = 30 * MINUTE_MS
    max_session_events: int = 100
    max_history_events: int = 200
    max_user_items: int = 500
    #: An event up to this much older (event time) than its user's newest one is still folded, in
    #: event-time order; an older one is refused at ingest with the reason (``sessions.lateness``).
    allowed_lateness_ms: int = 10 * MINUTE_MS

    def __post_init__(self) -> None:
        _require(self.timeout_ms > 0, "session.timeout_ms", "a positive integer", self.timeout_ms)
        _require(
            self.allowed_lateness_ms >= 0, "session.allowed_lateness_ms", "an integer >= 0", self.allowed_lateness_ms
        )
        for name in ("max_session_events", "max_history_events", "max_user_items"):
            value = getattr(self, name)
            _require(value >= 1, f"session.{name}", "an integer >= 1", value)


@dataclass(frozen=True, slots=True)
class SurfaceConfig:
    """A place that shows a list, with its own rules."""

    name: str
    exclude_seen: bool = False
    exclude_cart: bool = False
    exclude_current_item: bool = True
    default_k: int = 10
    max_k: int = 100
    budget_ms: float = 50.0
    freshness: Freshness = "realtime"
    #: At most this many items the user already interacted with (this session or earlier ones) per
    #: list, the best-ranked kept; ``None`` for no limit. Re-visits are likely, but a list made
    #: only of them shows nothing new.
    max_seen: int | None = 3
    #: Degradation: move one tier down when the p99 of the last ``degrade_window`` requests passes
    #: ``degrade_p99_ms``; back up after it stays at or under ``recover_ratio`` of that for
    #: ``recover_hold_s`` seconds; no move before the window is full.
    degrade_p99_ms: float = 80.0
    degrade_window: int = 200
    recover_ratio: float = 0.5
    recover_hold_s: float = 30.0
    #: Freshness ``session``: serve the kept list again while the session embedding moved less than
    #: this (cosine distance); ``session`` and ``batch``: never a list older than ``cache_ttl_s``.
    drift_threshold: float = 0.05
    cache_ttl_s: float = 300.0
    #: Stability (churn budget) against the list last shown in this session: the first
    #: ``keep_top`` positions keep their item unless a newcomer scores ``keep_margin`` more; at
    #: most ``max_new`` new items per refresh (``None``: no limit).
    keep_top: int = 0
    keep_margin: float = 0.5
    max_new: int | None = None
    #: Hot-spot control: an item whose popularity (relative to the most popular item's, from
    #: training) is above ``hot_threshold`` loses ``hot_discount * ln(popularity / threshold)`` of
    #: its score (tiers full and fast), so a few items do not take every list. ``None``: off.
    hot_threshold: float | None = None
    hot_discount: float = 1.0
    #: Exploration: ``floor(k * explore_share)`` of the last positions go to a seeded Thompson-
    #: sampling bandit over the next-best candidates (``online.bandit``). 0: off.
    explore_share: float = 0.0

    def __post_init__(self) -> None:
        _require(bool(self.name), "surface.name", "a non-empty string", self.name)
        _require(
            self.degrade_p99_ms > 0, f"surfaces.{self.name}.degrade_p99_ms", "a positive number", self.degrade_p99_ms
        )
        _require(
            self.degrade_window >= 10, f"surfaces.{self.name}.degrade_window", "an integer >= 10", self.degrade_window
        )
        _require(0 < self.recover_ratio <= 1, f"surfaces.{self.name}.recover_ratio", "0 < x <= 1", self.recover_ratio)
        _require(0 <= self.drift_threshold <= 2, f"surfaces.{self.name}.drift_threshold", "0..2", self.drift_threshold)
        _require(self.cache_ttl_s > 0, f"surfaces.{self.name}.cache_ttl_s", "a positive number", self.cache_ttl_s)
        _require(self.keep_top >= 0, f"surfaces.{self.name}.keep_top", "an integer >= 0", self.keep_top)
        _require(self.keep_margin >= 0, f"surfaces.{self.name}.keep_margin", "a number >= 0", self.keep_margin)
        _require(
            self.max_new is None or self.max_new >= 0,
            f"surfaces.{self.name}.max_new",
            "an integer >= 0 (or absent)",
            self.max_new,
        )
        _require(
            self.hot_threshold is None or 0 < self.hot_threshold <= 1,
            f"surfaces.{self.name}.hot_threshold",
            "0 < x <= 1 (or absent)",
            self.hot_threshold,
        )
        _require(
            0 <= self.explore_share <= 0.5,
            f"surfaces.{self.name}.explore_share",
            "0 <= x <= 0.5",
            self.explore_share,
        )
        _require(self.hot_discount >= 0, f"surfaces.{self.name}.hot_discount", "a number >= 0", self.hot_discount)
        _require(self.recover_hold_s >= 0, f"surfaces.{self.name}.recover_hold_s", ">= 0 seconds", self.recover_hold_s)
        _require(
            self.max_seen is None or self.max_seen >= 0,
            f"surfaces.{self.name}.max_seen",
            "an integer >= 0",
            self.max_seen,
        )
        _require(
            1 <= self.default_k <= self.max_k, f"surfaces.{self.name}.default_k", f"1..{self.max_k}", self.default_k
        )
        _require(self.budget_ms > 0, f"surfaces.{self.name}.budget_ms", "a positive number", self.budget_ms)
        _require(
            self.freshness in ("realtime", "session", "batch"),
            f"surfaces.{self.name}.freshness",
            "realtime | session | batch",
            self.freshness,
        )


#: The churn budget of every default surface: the tightest point of the relevance-vs-churn curve
#: (``evaluate --churn-curve``) that costs under 1% NDCG@20 (docs/evaluation.md, relevance vs churn).
DEFAULT_MAX_NEW = 5


def default_surfaces() -> dict[str, SurfaceConfig]:
    return {
        "home": SurfaceConfig("home", max_new=DEFAULT_MAX_NEW),
        "product_page": SurfaceConfig(
            "product_page", exclude_seen=False, exclude_current_item=True, max_new=DEFAULT_MAX_NEW
        ),
        "cart": SurfaceConfig("cart", exclude_cart=True, max_new=DEFAULT_MAX_NEW),
        "search_prequery": SurfaceConfig("search_prequery", max_new=DEFAULT_MAX_NEW),
        "continue": SurfaceConfig("continue", exclude_seen=True, max_new=DEFAULT_MAX_NEW),
    }


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a running engine needs, made once at start-up and passed down."""

    data_dir: Path = Path("insession-data")
    model_dir: Path | None = None
    store: str = "memory"
    session: SessionConfig = field(default_factory=SessionConfig)
    surfaces: Mapping[str, SurfaceConfig] = field(default_factory=default_surfaces)
    state_ttl_s: int = 30 * 24 * 3600
    snapshot_every_events: int = 50_000
    #: Replay checkpoints (``checkpoints.sqlite``; explain and forget fold from the nearest one):
    #: one after this many folded events or this many seconds of event time, whichever comes first.
    checkpoint_every_events: int = 10_000
    checkpoint_every_s: float = 86_400.0
    #: Users, items and co-visitation lists an explanation fold keeps decoded; beyond this many, they
    #: are dropped after its next checkpoint and read back from the checkpoint file when used (the
    #: explanation process's memory follows this, not every user the log ever held).
    explain_cache_entries: int = 20_000
    #: Items the stream may add to the catalog (unknown item ids in events, embedded, learning
    #: online) beyond those the model was trained with or ``POST /v1/items`` added; events naming
    #: more are still stored and folded, their items just stay out of the catalog until a retrain
    #: (counted in ``/healthz`` as ``items_not_joined``).
    max_joined_items: int = 1_000_000
    max_batch_events: int = 1000
    #: Request manifests kept (the oldest beyond this are pruned).
    request_log_retention: int = 1_000_000
    host: str = "127.0.0.1"
    port: int = 8000
    #: Redis only: stream partitions (users are spread over them; at most one worker folds each).
    stream_partitions: int = 16
    #: Redis only: a request gives up on Redis after this long and degrades to ``popular``.
    store_timeout_ms: float = 25.0
    #: Redis only: the in-process L1 cache serves item activity at most this old (0: no L1).
    l1_max_age_ms: float = 1000.0
    #: Redis only: a retried ``event_id`` is recognised as a duplicate for this long.
    dedup_window_s: int = 3600
    #: Learn from the stream as it arrives: online co-visitation counts, and items the model was
    #: trained without join the catalog (embedded engine). ``False``: the trained model only.
    learn_online: bool = True
    #: A request body larger than this is refused with 413 before it is parsed.
    max_body_bytes: int = 4 * 1024 * 1024
    #: Overload: beyond this many requests in flight, or once a request has waited this long to
    #: start, it is refused with 503 and Retry-After instead of queueing without bound.
    max_inflight: int = 64
    max_queue_ms: float = 25.0
    #: Requests running in the engine at once (the rest wait, up to ``max_queue_ms``).
    max_concurrent: int = 2
    #: A request whose body has not fully arrived this long after its headers gets 408 and gives
    #: its in-flight slot back (a slow or stalled sender cannot hold the server's slots).
    body_timeout_ms: float = 10_000.0
    #: Explanations (seconds of CPU each) may use at most this share of the server's time, over
    #: a sliding ``explain_window_s``; beyond it they are refused with 503 + Retry-After, so they
    #: can never starve lists and events.
    explain_share: float = 0.1
    explain_window_s: float = 60.0
    #: Served from a model directory, explanations run in a child process of their own (a second
    #: copy of the model in memory) so they never hold the interpreter lists are served in.
    explain_process: bool = True
    #: API keys (``X-API-Key`` or ``Authorization: Bearer``): when set, writing events needs one of
    #: ``write_keys`` and reading lists or explanations one of ``read_keys``. Never logged.
    read_keys: tuple[str, ...] = field(default=(), repr=False)
    write_keys: tuple[str, ...] = field(default=(), repr=False)
    #: How a shop's own tables map onto events (``[data]``: columns, event names, extra
    #: properties, the share of rows a load may skip); ``train``, ``evaluate`` and ``import`` read it.
    data: DataMapping = field(default_factory=DataMapping)

    def __post_init__(self) -> None:
        _require(self.state_ttl_s > 0, "state_ttl_s", "a positive integer", self.state_ttl_s)
        every, every_s = self.checkpoint_every_events, self.checkpoint_every_s
        _require(every >= 1, "checkpoint_every_events", "an integer >= 1", every)
        _require(every_s > 0, "checkpoint_every_s", "a positive number of seconds", every_s)
        cache = self.explain_cache_entries
        _require(cache >= 1, "explain_cache_entries", "an integer >= 1", cache)
        _require(self.max_joined_items >= 0, "max_joined_items", "an integer >= 0", self.max_joined_items)
        _require(1 <= self.max_batch_events <= 100_000, "max_batch_events", "1..100000", self.max_batch_events)
        _require(0 <= self.port <= 65535, "port", "0..65535", self.port)
        _require(1 <= self.stream_partitions <= 1024, "stream_partitions", "1..1024", self.stream_partitions)
        _require(self.store_timeout_ms > 0, "store_timeout_ms", "a positive number of ms", self.store_timeout_ms)
        _require(self.l1_max_age_ms >= 0, "l1_max_age_ms", "a number of ms >= 0", self.l1_max_age_ms)
        _require(self.dedup_window_s >= 1, "dedup_window_s", "an integer >= 1", self.dedup_window_s)
        _require(self.max_body_bytes >= 1024, "max_body_bytes", "an integer >= 1024", self.max_body_bytes)
        _require(self.max_inflight >= 1, "max_inflight", "an integer >= 1", self.max_inflight)
        _require(self.max_concurrent >= 1, "max_concurrent", "an integer >= 1", self.max_concurrent)
        _require(self.max_queue_ms > 0, "max_queue_ms", "a positive number of ms", self.max_queue_ms)
        _require(self.body_timeout_ms > 0, "body_timeout_ms", "a positive number of ms", self.body_timeout_ms)
        _require(0 < self.explain_share <= 1, "explain_share", "0 < x <= 1", self.explain_share)
        _require(self.explain_window_s > 0, "explain_window_s", "a positive number of seconds", self.explain_window_s)
        for name in ("read_keys", "write_keys"):
            keys = getattr(self, name)
            _require(
                all(isinstance(k, str) and len(k) >= 16 for k in keys),
                name,
                "keys of at least 16 characters",
                f"{len(keys)} keys, {sum(1 for k in keys if not isinstance(k, str) or len(k) < 16)} too short",
            )
        _require(
            self.store == "memory" or is_redis_url(self.store),
            "store",
            "'memory', a redis://HOST:PORT URL or redis+cluster://HOST:PORT[,HOST:PORT...]",
            self.store,
        )

    def surface(self, name: str) -> SurfaceConfig:
        found = self.surfaces.get(name)
        if found is None:
            raise ValidationError([FieldError("surface", f"one of {', '.join(sorted(self.surfaces))}", describe(name))])
        return found

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @staticmethod
    def load(env: Mapping[str, str] | None = None, toml_path: Path | None = None, **overrides: Any) -> Settings:
        """Defaults, then the TOML file, then ``INSESSION_*`` variables, then ``overrides``."""
        env = env or {}
        values: dict[str, Any] = {}
        path = toml_path or (Path(env["INSESSION_CONFIG"]) if "INSESSION_CONFIG" in env else None)
        if path is not None:
            values.update(_from_toml(path))
        for key, name, kind in (
            ("INSESSION_DATA_DIR", "data_dir", Path),
            ("INSESSION_MODEL_DIR", "model_dir", Path),
            ("INSESSION_STORE", "store", str),
            ("INSESSION_STATE_TTL_S", "state_ttl_s", int),
            ("INSESSION_HOST", "host", str),
            ("INSESSION_PORT", "port", int),
        ):
            if key in env:
                try:
                    values[name] = kind(env[key])
                except ValueError:
                    raise ValidationError([FieldError(key, kind.__name__, describe(env[key]))]) from None
        for key, name in (("INSESSION_READ_KEYS", "read_keys"), ("INSESSION_WRITE_KEYS", "write_keys")):
            if key in env:
                values[name] = tuple(k.strip() for k in env[key].split(",") if k.strip())
        if "INSESSION_SESSION_TIMEOUT_MIN" in env:
            raw = env["INSESSION_SESSION_TIMEOUT_MIN"]
            try:
                minutes = float(raw)
            except ValueError:
                raise ValidationError(
                    [FieldError("INSESSION_SESSION_TIMEOUT_MIN", "a number of minutes", describe(raw))]
                ) from None
            values["session"] = SessionConfig(timeout_ms=int(minutes * MINUTE_MS))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Settings(**values)


_INT_KEYS = (
    "port",
    "state_ttl_s",
    "snapshot_every_events",
    "checkpoint_every_events",
    "explain_cache_entries",
    "max_joined_items",
    "max_batch_events",
    "request_log_retention",
    "stream_partitions",
    "dedup_window_s",
    "max_body_bytes",
    "max_inflight",
    "max_concurrent",
)
_FLOAT_KEYS = (
    "checkpoint_every_s",
    "store_timeout_ms",
    "l1_max_age_ms",
    "max_queue_ms",
    "body_timeout_ms",
    "explain_share",
    "explain_window_s",
)
_TOP_KEYS = (
    "data_dir",
    "model_dir",
    "store",
    "host",
    *_INT_KEYS,
    *_FLOAT_KEYS,
    "learn_online",
    "explain_process",
    "read_keys",
    "write_keys",
    "session",
    "surfaces",
    "data",
)
_SESSION_KEYS = (
    "timeout_minutes",
    "allowed_lateness_minutes",
    "max_session_events",
    "max_history_events",
    "max_user_items",
)
_DATA_KEYS = ("columns", "event_types", "properties", "default_event_type", "max_skipped")


def _refuse_unknown(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse keys a table does not have, naming each and the nearest known one (a typo like
    ``max_inflght`` must not be ignored silently)."""
    import difflib

    errors = []
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" (did you mean '{where}{near[0]}'?)" if near else ""
            errors.append(
                FieldError(f"{where}{key}", f"a known key{hint}; see docs/configuration.md", "an unknown key")
            )
    if errors:
        raise ValidationError(errors)


def _number(doc: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise ValidationError(
            [FieldError(f"{where}{key}", "an integer" if kind is int else "a number", describe(value))]
        )
    return kind(value)


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise ValidationError([FieldError(key, f"a [{key}] table", describe(value))])
    return value


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:200]
        raise ValidationError([FieldError("config", f"a readable TOML file at {path}", detail)]) from None
    _refuse_unknown(doc, _TOP_KEYS, "")
    out: dict[str, Any] = {}
    for key in ("store", "host"):
        if key in doc:
            if not isinstance(doc[key], str):
                raise ValidationError([FieldError(key, "a string", describe(doc[key]))])
            out[key] = doc[key]
    for key in _INT_KEYS:
        if key in doc:
            out[key] = _number(doc, key, int)
    for key in ("read_keys", "write_keys"):
        if key in doc:
            if not isinstance(doc[key], list) or not all(isinstance(k, str) for k in doc[key]):
                raise ValidationError([FieldError(key, "a list of strings", describe(doc[key]))])
            out[key] = tuple(doc[key])
    for key in _FLOAT_KEYS:
        if key in doc:
            out[key] = _number(doc, key, float)
    for key in ("learn_online", "explain_process"):
        if key in doc:
            if not isinstance(doc[key], bool):
                raise ValidationError([FieldError(key, "true or false", describe(doc[key]))])
            out[key] = doc[key]
    for key in ("data_dir", "model_dir"):
        if key in doc:
            if not isinstance(doc[key], str):
                raise ValidationError([FieldError(key, "a path (a string)", describe(doc[key]))])
            out[key] = Path(doc[key])
    session = _table(doc, "session")
    _refuse_unknown(session, _SESSION_KEYS, "session.")
    if session:
        kwargs: dict[str, Any] = {}
        if "timeout_minutes" in session:
            kwargs["timeout_ms"] = int(_number(session, "timeout_minutes", float, "session.") * MINUTE_MS)
        if "allowed_lateness_minutes" in session:
            minutes = _number(session, "allowed_lateness_minutes", float, "session.")
            kwargs["allowed_lateness_ms"] = int(minutes * MINUTE_MS)
        for key in ("max_session_events", "max_history_events", "max_user_items"):
            if key in session:
                kwargs[key] = _number(session, key, int, "session.")
        out["session"] = SessionConfig(**kwargs)
    surfaces = dict(default_surfaces())
    allowed = tuple(sorted(set(SurfaceConfig.__dataclass_fields__) - {"name"}))
    for name, table in _table(doc, "surfaces").items():
        if not isinstance(table, Mapping):
            raise ValidationError([FieldError(f"surfaces.{name}", f"a [surfaces.{name}] table", describe(table))])
        _refuse_unknown(table, allowed, f"surfaces.{name}.")
        try:
            surfaces[name] = SurfaceConfig(name=name, **table)
        except TypeError as exc:
            raise ValidationError([FieldError(f"surfaces.{name}", "valid settings", str(exc))]) from None
    out["surfaces"] = surfaces
    data = _table(doc, "data")
    _refuse_unknown(data, _DATA_KEYS, "data.")
    if data:
        out["data"] = _data_mapping(data)
    return out


def _data_mapping(data: Mapping[str, Any]) -> DataMapping:
    from insession.datasets.mapping import parse_fraction

    for key in ("columns", "event_types"):
        value = data.get(key, {})
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ValidationError([FieldError(f"data.{key}", "a table of names to strings", describe(value))])
    properties = data.get("properties", [])
    if isinstance(properties, str):
        properties = [properties]
    if not isinstance(properties, list) or not all(isinstance(p, str) for p in properties):
        raise ValidationError([FieldError("data.properties", 'a list of column names (or "*")', describe(properties))])
    kwargs: dict[str, Any] = {
        "columns": dict(data.get("columns", {})),
        "event_types": dict(data.get("event_types", {})),
        "properties": tuple(properties),
    }
    if "default_event_type" in data:
        kwargs["default_event_type"] = data["default_event_type"]
    if "max_skipped" in data:
        kwargs["max_skipped"] = parse_fraction(data["max_skipped"], "data.max_skipped")
    return DataMapping(**kwargs)
