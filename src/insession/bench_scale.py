"""``insession bench --scale-out``: two servers and two stream workers on one Redis, and the same
on a 3-node Redis Cluster, against the embedded server, in one run on loopback.

1. Train the synthetic shop (as ``insession bench``), start a redis-server and a 3-node Redis
   Cluster of its own on free loopback ports (unless given ``redis://…`` or
   ``redis+cluster://…``, which replaces the one of its kind).
2. Embedded: the shop's events folded into a data directory, one server, one driver.
3. One Redis, then the Cluster: the shop's events appended through the Python API
   (``Engine.on_redis``) and folded by an in-process worker (its throughput and round trips per
   round are measured), then two servers (``--workers 0``) and two ``insession worker``
   processes. Driven by one driver (latency against embedded), then by two at once, one per
   server (the pair's throughput), then one driver again with the L1 cache off (what L1 saves).
4. Every child is stopped by its PID; the redis-servers too, if this started them.

Also here: :class:`LocalRedis` and :class:`LocalCluster`, the redis-servers of one's own that
this benchmark, ``benchmarks/redis_read_path.py`` and the tests start.

Each phase is bounded by ``requests`` steps or ``seconds``. The machine's cores are shared by
every process here (servers, workers, Redis, drivers), which the figures include.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from insession.bench import _free_port, _get_json, _pct, _wait_ready, drive_all, start_child, stop_child, train_shop
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.errors import InsessionError
from insession.log.redis_stream import RedisStreamEventLog
from insession.model import ModelBundle
from insession.redis_backend import CLUSTER_SCHEME, connect, is_cluster
from insession.worker import GROUP, StreamWorker, item_backlog


def _free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (10000 above it) is free too."""
    for _ in range(100):
        port = _free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise InsessionError("no free loopback port pair for a Redis Cluster node")


class LocalRedis:
    """A redis-server of the caller's own on a loopback port (nothing saved to disk), started at
    once and stopped by its PID with :meth:`stop`; :meth:`start` starts it again on the same port
    (a Cluster node keeps its cluster configuration file in ``workdir``)."""

    def __init__(self, workdir: Path, port: int | None = None, cluster: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise InsessionError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or (_free_cluster_port() if cluster else _free_port())
        self.cluster = cluster
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise InsessionError(f"redis-server on port {self.port} is not running")
        return self.process.pid

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.workdir)]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
            cmd += ["--cluster-node-timeout", "2000"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.025)
        self.stop()
        raise InsessionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class LocalCluster:
    """A Redis Cluster of ``nodes`` primaries (no replicas) of the caller's own on loopback:
    cluster-enabled redis-servers joined by ``redis-cli --cluster create``, ready once every node
    says ``cluster_state:ok``. Stopped (every node by its PID) with :meth:`stop`; :meth:`start`
    starts the same nodes again, which form the same cluster (empty: nothing is saved)."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise InsessionError("redis-cli is not installed (apt-get install redis-tools)")
        self.nodes: list[LocalRedis] = []
        try:
            for n in range(nodes):
                self.nodes.append(LocalRedis(workdir / f"node-{n}", cluster=True))
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            made = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if made.returncode != 0:
                raise InsessionError(
                    f"redis-cli --cluster create failed: {made.stdout[-500:]!r} {made.stderr[-500:]!r}"
                )
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(addresses)

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    def _wait_ok(self, timeout_s: float = 30.0) -> None:
        import redis

        deadline = time.monotonic() + timeout_s
        pending = list(self.nodes)
        while pending:
            node = pending[0]
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)
            try:
                info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" in text:
                    pending.pop(0)
                    continue
            except redis.RedisError:
                pass
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise InsessionError(f"the cluster's node on port {node.port} did not reach cluster_state:ok")
            time.sleep(0.05)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self._wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def command_counts(client: Any) -> Counter[str]:
    """Commands each Redis (every Cluster node) has run since it started, by name, summed: what a
    benchmark or a test diffs around an operation to count the commands it sent."""
    infos = (
        client.info("commandstats", target_nodes=client.PRIMARIES).values()
        if is_cluster(client)
        else [client.info("commandstats")]
    )
    out: Counter[str] = Counter()
    for info in infos:
        for name, stats in info.items():
            out[name.removeprefix("cmdstat_")] += int(stats["calls"])
    for handshake in ("hello", "client|setinfo", "info"):  # new connections, and this count itself
        out.pop(handshake, None)
    return out


def _pooled(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Several drivers' figures as one: latency percentiles over all samples, rates summed."""
    samples = [ms for f in figures for ms in f.get("recommend_ms", [])]
    ingest = sum(f["ingest_events"] for f in figures)
    seconds = max(f["ingest_seconds"] for f in figures)
    return {
        "drivers": len(figures),
        "recommend_p50_ms": round(statistics.median(samples), 3) if samples else None,
        "recommend_p95_ms": round(_pct(samples, 0.95), 3),
        "recommend_p99_ms": round(_pct(samples, 0.99), 3),
        "bare_p50_ms": round(statistics.median([f["bare_p50_ms"] for f in figures]), 3),
        "requests_per_s": round(sum(f["requests_per_s"] or 0 for f in figures), 1),
        "ingest_events_per_s": round(ingest / seconds, 1) if seconds > 0 else None,
        "tiers": {t: sum(f["tiers"].get(t, 0) for f in figures) for t in {t for f in figures for t in f["tiers"]}},
        "errors": sum(f["errors"] for f in figures),
    }


def _phase(
    name: str,
    ports: list[int],
    shop: SyntheticShop,
    requests: int,
    seconds: float,
    seed: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    progress(f"{name}: {len(ports)} driver(s), {requests} steps or {seconds:.0f} s each")
    return _pooled(drive_all(ports, shop, requests, seconds, seed, raw=True))


def _backend_phases(
    tag: str,
    url: str,
    shop: SyntheticShop,
    model: ModelBundle,
    tmp: Path,
    requests: int,
    seconds: float,
    seed: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """One Redis deployment (``tag``: ``redis`` or ``cluster``): the shop's events appended through
    the Python API and folded by one in-process worker, then two servers and two ``insession
    worker`` processes driven by one driver, by two at once, and by one with the L1 cache off."""
    out: dict[str, Any] = {}
    children: list[subprocess.Popen[bytes]] = []
    client = connect(url, 5000.0, retries=1)
    client.flushdb()
    try:
        settings = Settings(data_dir=tmp / f"{tag}-api", store=url)
        progress(f"{tag}: appending the shop's events through the Python API")
        engine = Engine.open(settings, model, ManualClock(shop.events[-1].ts + 60_000))
        t = time.perf_counter()
        for i in range(0, len(shop.events), 100):
            engine.ingest(shop.events[i : i + 100])
        append_s = time.perf_counter() - t
        engine.close()
        progress(f"{tag}: folding them with one in-process worker")
        worker = StreamWorker(connect(url, 5000.0, retries=1), settings)
        t = time.perf_counter()
        folded = worker.drain()
        fold_s = time.perf_counter() - t
        worker.release()
        out[f"{tag}_api_append_events_per_s"] = round(len(shop.events) / append_s, 1)
        out[f"{tag}_worker_fold_events_per_s"] = round(folded / fold_s, 1)
        out[f"{tag}_worker_rounds"] = worker.stats.rounds
        out[f"{tag}_worker_round_trips_per_round"] = round(worker.guard.calls / max(worker.stats.rounds, 1), 2)
        stream = RedisStreamEventLog(client, settings.stream_partitions)
        model_dir = tmp / "model"

        def start_servers(config: Path | None, name: str) -> list[int]:
            ports = []
            for n in range(2):
                port = _free_port()
                argv = ["serve", "--model", str(model_dir), "--store", url, "--workers", "0"]
                argv += ["--data-dir", str(tmp / f"{name}-{n}"), "--port", str(port), "--bare-endpoint"]
                argv += ["--config", str(config)] if config else []
                log = tmp / f"{name}-server-{n}.log"
                child = start_child(argv, log)
                children.append(child)
                _wait_ready(port, child, log)
                ports.append(port)
            return ports

        for n in range(2):
            children.append(start_child(["worker", "--store", url], tmp / f"{tag}-worker-{n}.log"))
        ports = start_servers(None, f"{tag}-l1")
        out[f"{tag}_one_driver"] = _phase(f"{tag}, one driver", ports[:1], shop, requests, seconds, seed, progress)
        out[f"{tag}_two_drivers"] = _phase(f"{tag}, two drivers", ports, shop, requests, seconds, seed + 10, progress)
        health = [_get_json(p, "/healthz")["store"] for p in ports]
        out[f"{tag}_l1_hit_rate"] = [h.get("l1_hit_rate") for h in health]
        t = time.perf_counter()

        def backlog() -> int:
            return int(stream.backlog(GROUP)) + item_backlog(client, stream.keys)

        while backlog() and time.perf_counter() - t < 60:
            time.sleep(0.05)
        out[f"{tag}_backlog_after_drain"] = backlog()
        out[f"{tag}_worker_catch_up_seconds"] = round(time.perf_counter() - t, 2)
        for child in children[2:]:
            stop_child(child)
        del children[2:]
        config = tmp / "no-l1.toml"
        config.write_text("l1_max_age_ms = 0\n", encoding="utf-8")
        ports = start_servers(config, f"{tag}-nol1")
        out[f"{tag}_no_l1_one_driver"] = _phase(
            f"{tag} without L1, one driver", ports[:1], shop, requests, seconds, seed + 20, progress
        )
    finally:
        for child in children:
            stop_child(child)
        client.close()
    return out


def run_scale_bench(
    n_items: int = 10_000,
    requests: int = 1500,
    seconds: float = 60.0,
    seed: int = 1,
    redis_url: str | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Embedded, one Redis and a 3-node Redis Cluster, one after the other in one run; each Redis
    is started here unless ``redis_url`` names one of that kind to use instead."""
    shop, cfg, model, train_s = train_shop(n_items, seed, None, False, progress)
    out: dict[str, Any] = {"items": len(model.catalog), "events": len(shop.events), "train_seconds": round(train_s, 1)}
    given_cluster = redis_url is not None and redis_url.startswith(CLUSTER_SCHEME)
    with tempfile.TemporaryDirectory(prefix="insession-scale-") as tmp_name:
        tmp = Path(tmp_name)
        model.save(tmp / "model")
        single: LocalRedis | None = None
        cluster: LocalCluster | None = None
        try:
            if redis_url is None or given_cluster:
                single = LocalRedis(tmp / "redis")
            if not given_cluster:
                progress("starting a 3-node Redis Cluster")
                cluster = LocalCluster(tmp / "cluster")
            urls = {
                "redis": single.url if single is not None else str(redis_url),
                "cluster": cluster.url if cluster is not None else str(redis_url),
            }
            out["cluster_url_given"] = given_cluster
            out["redis_url_given"] = redis_url is not None and not given_cluster

            progress("embedded: folding the shop's events")
            clock = ManualClock(shop.events[-1].ts + 60_000)
            engine = Engine.open(Settings(data_dir=tmp / "embedded", snapshot_every_events=10**9), model, clock)
            engine.ingest_all(shop.events, batch=100)
            engine.close()
            port = _free_port()
            args = ["serve", "--model", str(tmp / "model"), "--data-dir", str(tmp / "embedded"), "--port", str(port)]
            server = start_child([*args, "--bare-endpoint"], tmp / "embedded.log")
            try:
                _wait_ready(port, server, tmp / "embedded.log")
                out["embedded"] = _phase("embedded", [port], shop, requests, seconds, seed, progress)
            finally:
                stop_child(server)
            for tag, url in urls.items():
                out.update(_backend_phases(tag, url, shop, model, tmp, requests, seconds, seed, progress))
        finally:
            if single is not None:
                single.stop()
            if cluster is not None:
                cluster.stop()
    emb = out["embedded"]
    for tag in ("redis", "cluster"):
        one, no_l1 = out[f"{tag}_one_driver"], out[f"{tag}_no_l1_one_driver"]
        out[f"{tag}_over_embedded_p50"] = round(one["recommend_p50_ms"] / emb["recommend_p50_ms"], 2)
        out[f"{tag}_l1_saves_p50_ms"] = round(no_l1["recommend_p50_ms"] - one["recommend_p50_ms"], 3)
        out[f"{tag}_l1_saves_p99_ms"] = round(no_l1["recommend_p99_ms"] - one["recommend_p99_ms"], 3)
    out["cluster_over_redis_p50"] = round(
        out["cluster_one_driver"]["recommend_p50_ms"] / out["redis_one_driver"]["recommend_p50_ms"], 2
    )
    out["consumer_group"] = GROUP
    out.update(python=platform.python_version(), cpus=os.cpu_count(), users=cfg.n_users)
    return out
