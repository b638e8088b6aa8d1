"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


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
        self.http_requests = Counter(
            "insession_http_requests_total", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.log_position = Gauge("insession_log_position", "Last event-log position applied", registry=self.registry)
        self.users = Gauge("insession_live_users", "Users with live state in the store", registry=self.registry)
        self.tier = Gauge(
            "insession_surface_tier",
            "Tier a surface serves now: 0 full, 1 fast, 2 popular",
            ["surface"],
            registry=self.registry,
        )
        self.tier_p99 = Gauge(
            "insession_surface_p99_ms",
            "Rolling p99 latency (ms) the tier monitor last computed for a surface",
            ["surface"],
            registry=self.registry,
        )
        self.tier_changes = Gauge(
            "insession_surface_tier_changes", "Tier moves of a surface since start", ["surface"], registry=self.registry
        )
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

        self.store_up = Gauge(
            "insession_store_up", "1 while Redis answers, 0 while it is skipped", registry=self.registry
        )
        self.store_failures = Gauge(
            "insession_store_failures", "Redis calls that failed or timed out since start", registry=self.registry
        )
        self.capped = Gauge(
            "insession_events_capped",
            "Events kept out of item activity: over their user's share of one item (guard rail)",
            registry=self.registry,
        )
        self.l1_hit_rate = Gauge(
            "insession_l1_hit_rate", "Share of item-activity reads served by L1", registry=self.registry
        )
        self.refused = Counter(
            "insession_refused_requests",
            "Requests refused before the engine saw them, by reason (inflight, queued, body, auth)",
            ["reason"],
            registry=self.registry,
        )
        self.inflight = Gauge("insession_inflight_requests", "Requests being answered now", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
