"""Prometheus metrics, one registry per app (no process-global state), by Prometheus's conventions:
counters end in ``_total``, durations are in seconds, ``*_info`` gauges carry versions as labels.

What the app counts as it answers (requests, lists, events, refusals) lives in ``ServiceMetrics``;
what the engine already keeps (capped events, store failures, tier moves, live users) is read at
scrape time by a collector (``watch``), so a count is exposed as a counter without a second tally.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from insession import __version__

if TYPE_CHECKING:
    from insession.engine import Engine

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_HTTP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "insession_events_total", "Events received, by outcome", ["outcome"], registry=self.registry
        )
        self.recommend_latency = Histogram(
            "insession_recommend_seconds",
            "Recommendation latency inside the engine",
            ["surface", "tier"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "insession_stage_seconds",
            "Time per pipeline stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "insession_http_request_duration_seconds",
            "HTTP requests from arrival to the end of the answer, by route template and status",
            ["route", "status"],
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.log_position = Gauge("insession_log_position", "Last event-log position applied", registry=self.registry)
        self.lists = Counter(
            "insession_lists_total",
            "Lists served, computed or served again from the freshness cache",
            ["surface", "source"],
            registry=self.registry,
        )
        self.churn = Histogram(
            "insession_churn_at_k",
            "Share of the top k new since the previous list in the session",
            ["surface"],
            buckets=(0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
            registry=self.registry,
        )
        self.cuts = Counter(
            "insession_stage_cuts_total", "Requests where a stage ran out of time", ["stage"], registry=self.registry
        )
        self.refused = Counter(
            "insession_refused_requests",
            "Requests refused before the engine saw them, by reason "
            "(inflight, queued, body, body_timeout, auth, explain_share)",
            ["reason"],
            registry=self.registry,
        )
        self.inflight = Gauge("insession_inflight_requests", "Requests being answered now", registry=self.registry)
        self.build = Gauge(
            "insession_build_info",
            "The running insession: version and Python (value 1)",
            ["version", "python"],
            registry=self.registry,
        )
        self.build.labels(__version__, platform.python_version()).set(1)

    def watch(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Expose what ``read`` returns at every scrape (the engine's own counts)."""
        self.registry.register(_Reader(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Reader(Collector):
    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return self.read()


def engine_metrics(engine: Engine) -> Iterator[Metric]:
    """The engine's own state and running counts, read at scrape time."""
    model = InfoMetricFamily("insession_model", "The model serving lists (value 1)", labels=["version"])
    model.add_metric([engine.model.version], {})
    yield model
    users = engine.live_users()
    if users is not None:
        yield GaugeMetricFamily("insession_live_users", "Users with live state in the store", value=users)
    yield CounterMetricFamily(
        "insession_events_capped",
        "Events kept out of item activity: over their user's share of one item (guard rail)",
        value=engine.capped_events(),
    )
    store = engine.store_health()
    yield GaugeMetricFamily(
        "insession_store_up",
        "1 while the store takes writes (Redis answers; the data directory is writable), else 0",
        value=1 if store["up"] else 0,
    )
    failures = store.get("failures", store.get("write_failures", 0))
    yield CounterMetricFamily(
        "insession_store_failures",
        "Store calls that failed since start (Redis calls, or event-log appends)",
        value=float(failures),
    )
    yield CounterMetricFamily(
        "insession_snapshot_failures",
        "State snapshots that could not be written (retried; the log keeps every event)",
        value=float(store.get("snapshot_failures", 0)),
    )
    if "l1_hit_rate" in store:
        yield GaugeMetricFamily(
            "insession_l1_hit_rate", "Share of item-activity reads served by L1", value=float(store["l1_hit_rate"])
        )
    tier = GaugeMetricFamily(
        "insession_surface_tier", "Tier a surface serves now: 0 full, 1 fast, 2 popular", labels=["surface"]
    )
    p99 = GaugeMetricFamily(
        "insession_surface_p99_seconds",
        "Rolling p99 latency the tier monitor last computed for a surface",
        labels=["surface"],
    )
    changes = CounterMetricFamily(
        "insession_surface_tier_changes", "Tier moves of a surface since start", labels=["surface"]
    )
    for surface, state in engine.tiers.snapshot().items():
        tier.add_metric([surface], state["level"])
        p99.add_metric([surface], state["p99_ms"] / 1000.0)
        changes.add_metric([surface], state["changes"])
    yield from (tier, p99, changes)
