"""Redis as used by the feature store (``store/redis.py``), the event log (``log/redis_stream.py``)
and the stream workers (``worker.py``): the connection, the key layout and the failure guard.

Connection. ``redis://HOST:PORT[/DB]`` is one Redis; ``redis+cluster://HOST:PORT[,HOST:PORT...]``
is a Redis Cluster reached through any of the nodes listed (redis-py's cluster client learns the
rest). Importing this module does not import redis-py; :func:`connect` does, and names the extra
to install when it is missing.

Round trips. Every key insession writes carries a hash tag (``Keys``), so the keys one operation
touches together sit in one Cluster slot or in a few known ones. :func:`mget` reads keys of many
slots as one ``MGET`` per slot, sent as one pipeline: on one Redis that is a single ``MGET``, on a
Cluster one round trip to each node involved, all sent before any reply is read. :func:`run_script`
queues a Lua script whose keys share one slot (atomic on a Cluster as on one Redis).

The key layout is the contract written down in ``docs/redis.md``.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from insession.errors import FieldError, MissingExtra, StoreUnavailable, ValidationError

SINGLE_SCHEME = "redis://"
CLUSTER_SCHEME = "redis+cluster://"
T = TypeVar("T")


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` startup nodes of a ``redis+cluster://`` URL; ``ValueError`` naming
    what is wrong otherwise."""
    if not url.startswith(CLUSTER_SCHEME):
        raise ValueError(f"expected {CLUSTER_SCHEME}HOST:PORT[,HOST:PORT...]")
    rest = url[len(CLUSTER_SCHEME) :].rstrip("/")
    if "@" in rest or "/" in rest or "?" in rest:
        raise ValueError("a cluster URL lists HOST:PORT nodes only (no password, database or options)")
    nodes = []
    for part in rest.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {part!r}")
        nodes.append((host, int(port)))
    return nodes


def is_redis_url(url: str) -> bool:
    """Whether ``url`` names one Redis or a well-formed Redis Cluster node list."""
    if url.startswith(SINGLE_SCHEME):
        return True
    try:
        cluster_nodes(url)
    except ValueError:
        return False
    return True


def connect(url: str, timeout_ms: float = 25.0, retries: int = 0) -> Any:
    """A redis-py client for ``url``: ``redis.Redis`` for one Redis, ``redis.cluster.RedisCluster``
    for a Cluster. Every call gives up after ``timeout_ms``; a Cluster client retries a failed call
    ``retries`` times (after refreshing its map of the cluster), so a server's call stays bounded."""
    scheme = CLUSTER_SCHEME if url.startswith(CLUSTER_SCHEME) else SINGLE_SCHEME
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry
    except ImportError:
        raise MissingExtra(f"store: {scheme}", "redis") from None
    timeout = timeout_ms / 1000.0
    if scheme == SINGLE_SCHEME:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        _refuse_cluster_node(client, url)
        return client
    try:  # the cluster client asks a startup node for the cluster's map at once
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],  # type: ignore[no-untyped-call]
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), retries),
        )
    except redis_errors() as exc:
        raise StoreUnavailable(f"store: no node of {url} answered ({type(exc).__name__}: {exc})"[:300]) from exc


def _refuse_cluster_node(client: Any, url: str) -> None:
    """A ``redis://`` URL naming a node of a Redis Cluster would fail later, request by request,
    on keys of other nodes: say so now. (A Redis that does not answer is left to the calls.)"""
    try:
        enabled = client.info("cluster").get("cluster_enabled")
    except redis_errors():
        return
    if enabled:
        host_port = url[len(SINGLE_SCHEME) :].split("/")[0]
        raise ValidationError(
            [FieldError("store", f"{CLUSTER_SCHEME}{host_port} for a node of a Redis Cluster", f"{url}")]
        )


def redis_errors() -> tuple[type[Exception], ...]:
    """What redis-py raises when Redis fails: its ``RedisError``s, and the cluster client's own
    exceptions (no reachable node, a slot no node serves) that do not derive from it."""
    import redis
    from redis.exceptions import RedisClusterException

    return (redis.RedisError, RedisClusterException)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def mget(client: Any, keys: Sequence[str]) -> list[Any]:
    """The values of ``keys`` (``None`` where absent), in order: one ``MGET`` per Cluster slot, all
    in one pipeline (one round trip per node involved); a single ``MGET`` on one Redis."""
    if not keys:
        return []
    if not is_cluster(client):
        return list(client.mget(keys))
    by_tag: dict[str, list[int]] = {}  # insession's keys all carry a hash tag: group by its text
    for n, key in enumerate(keys):
        by_tag.setdefault(_hash_tag(key), []).append(n)
    by_slot: dict[int, list[int]] = {}
    for idx in by_tag.values():
        by_slot.setdefault(client.keyslot(keys[idx[0]]), []).extend(idx)
    if len(by_slot) == 1:  # one slot (a user's keys): a plain MGET, without the pipeline's retries
        return list(client.mget(list(keys)))
    pipe = client.pipeline(transaction=False)
    for idx in by_slot.values():
        queue(pipe, keys[idx[0]], "MGET", *[keys[n] for n in idx])
    out: list[Any] = [None] * len(keys)
    for idx, values in zip(by_slot.values(), pipe.execute(), strict=True):
        for n, value in zip(idx, values, strict=True):
            out[n] = value
    return out


def _hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first ``{`` and the next ``}`` when it is
    not empty, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def queue(pipe: Any, key: str, *command: Any) -> None:
    """Queue ``command`` on ``pipe`` (a pipeline of either client); every key it names shares the
    slot of ``key``. On a Cluster the command goes straight to the node serving that slot: left to
    itself, redis-py asks a server (``COMMAND GETKEYS``, one more round trip per command) where
    the keys of ``EVAL`` and ``XREADGROUP`` are."""
    if is_cluster(pipe):
        pipe.execute_command(*command, target_nodes=pipe.get_node_from_key(key))
    else:
        pipe.execute_command(*command)


def run_script(pipe: Any, script: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue ``script`` on ``pipe`` (a pipeline of either client); its ``keys`` must share one
    slot. Sent as ``EVAL``: Redis caches the compiled script by its hash, and the same call works
    on a Cluster pipeline, where redis-py does not manage scripts."""
    queue(pipe, keys[0], "EVAL", script, len(keys), *keys, *args)


def partition_of(key: str, partitions: int) -> int:
    """Which of ``partitions`` a user id (its stream and session) or a value key belongs to."""
    return zlib.crc32(key.encode()) % partitions


class Keys:
    """Every Redis key insession uses, in one place (``docs/redis.md``).

    Two kinds of hash tag, so that what is written together shares one Cluster slot:
    ``{s:<p>}`` for user partition ``p`` (its stream, dedup keys, lease, applied position, the
    session states of its users, and its outboxes of item updates) and ``{v:<q>}`` for value
    partition ``q`` (the namespace values whose key falls in ``q``: item activity, online
    co-visitation, the catalog's additions, and the inbox recording which item updates are in).
    """

    def __init__(self, prefix: str = "is", partitions: int = 16) -> None:
        if partitions < 1:
            raise ValueError(f"stream_partitions: expected an integer >= 1, got {partitions}")
        self.prefix = prefix
        self.partitions = partitions

    def user_partition(self, user_id: str) -> int:
        return partition_of(user_id, self.partitions)

    def value_partition(self, key: str) -> int:
        return partition_of(key, self.partitions)

    # -- user partition {s:<p>} ---------------------------------------------------------------
    def session(self, user_id: str) -> str:
        return f"{self.prefix}:{{s:{self.user_partition(user_id)}}}:u:{user_id}"

    def user_value(self, name: str, user_id: str) -> str:
        """A serving value of a user (``name``: ``shown``, ``kept``), in the slot of the user's
        session, so one ``MGET`` reads both. (The name comes before the user id, so no user id,
        whatever it holds, makes one user's key another's.)"""
        return f"{self.prefix}:{{s:{self.user_partition(user_id)}}}:uv:{name}:{user_id}"

    def stream(self, partition: int) -> str:
        return f"{self.prefix}:{{s:{partition}}}:events"

    def seen(self, partition: int, event_id: str) -> str:
        return f"{self.prefix}:{{s:{partition}}}:seen:{event_id}"

    def lease(self, partition: int) -> str:
        return f"{self.prefix}:{{s:{partition}}}:lease"

    def applied(self, partition: int) -> str:
        return f"{self.prefix}:{{s:{partition}}}:applied"

    def outbox(self, partition: int, value_partition: int) -> str:
        return f"{self.prefix}:{{s:{partition}}}:out:{value_partition}"

    # -- value partition {v:<q>} --------------------------------------------------------------
    def value(self, namespace: str, key: str) -> str:
        return f"{self.prefix}:{{v:{self.value_partition(key)}}}:{namespace}:{key}"

    def inbox(self, value_partition: int) -> str:
        return f"{self.prefix}:{{v:{value_partition}}}:in"

    # -- one key each -------------------------------------------------------------------------
    def position(self) -> str:
        return f"{self.prefix}:position"

    def workers(self) -> str:
        return f"{self.prefix}:workers"


class RedisGuard:
    """Turns Redis failures into :class:`StoreUnavailable` and stops asking a Redis that just
    failed for ``retry_ms`` (then one call probes it again). Counts the calls made through it:
    each is one round trip (one pipeline), the figure the benchmarks and tests read."""

    def __init__(self, retry_ms: float = 500.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.retry_ms = retry_ms
        self._monotonic = monotonic
        self._open_until = 0.0
        self._lock = threading.Lock()
        self.failures = 0
        self.calls = 0
        self.last_error: str | None = None

    @property
    def available(self) -> bool:
        return self._monotonic() >= self._open_until

    def call(self, what: str, fn: Callable[[], T]) -> T:
        if not self.available:
            raise StoreUnavailable(f"store: Redis is unavailable ({self.last_error}); {what} was not attempted")
        self.calls += 1
        try:
            result = fn()
        except redis_errors() as exc:
            with self._lock:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._open_until = self._monotonic() + self.retry_ms / 1000.0
            raise StoreUnavailable(f"store: Redis failed during {what} ({self.last_error})") from exc
        return result


__all__ = [
    "CLUSTER_SCHEME",
    "SINGLE_SCHEME",
    "Keys",
    "RedisGuard",
    "cluster_nodes",
    "connect",
    "is_cluster",
    "is_redis_url",
    "mget",
    "partition_of",
    "queue",
    "redis_errors",
    "run_script",
]
