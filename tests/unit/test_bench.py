from __future__ import annotations

from insession.bench import run_bench


def test_bench_drives_a_real_server_and_reports_the_interface_figures() -> None:
    figures = run_bench(n_items=200, requests=30, seconds=20)
    for key in ("recommend_p50_ms", "recommend_p95_ms", "recommend_p99_ms", "bare_p50_ms", "ingest_events_per_s"):
        assert figures[key] > 0, key
    assert figures["recommend_p99_ms"] >= figures["recommend_p50_ms"]
    assert figures["errors"] == 0
    assert figures["requests"] == 30 and sum(figures["tiers"].values()) == 30
    assert figures["engine_over_bare_p50"] is not None
    assert figures["sequence_model"] == "disabled"
