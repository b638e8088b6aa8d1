from __future__ import annotations

from insession.bench import run_bench


def test_bench_reports_the_interface_figures() -> None:
    figures = run_bench(n_items=200, requests=20)
    for key in ("recommend_p50_ms", "recommend_p99_ms", "bare_p50_ms", "ingest_events_per_s"):
        assert figures[key] > 0
    assert figures["recommend_p99_ms"] >= figures["recommend_p50_ms"]
