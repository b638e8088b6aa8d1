"""Forgetting a user (an erasure request, GDPR Art. 17): ``insession forget USER_ID`` and
``DELETE /v1/users/{user_id}``.

What goes, embedded:

1. *Checkpoints first.* The fold is run through the user's events, leaving a replay checkpoint
   (``insession.checkpoints``) right after each of them. Every other user's request is then
   explained from a checkpoint that already holds what the erased events did to shared item state,
   with none of the erased events left to fold between that checkpoint and the request: so every
   other list explains identically after the events are gone from the log.
2. The user's session states are deleted from every checkpoint; the user's 32-bit key is replaced
   by one random alias (``checkpoints.erasure_alias``, drawn for this erasure, derived from
   nothing) in the recent events of the items they touched (checkpoints and live store), so
   distinct-user counts and the per-user guard are what they were.
3. The log is compacted: the user's events are deleted (``secure_delete``: overwritten, not left
   in free pages; the WAL is truncated).
4. The serving state: the user's session is dropped, with the lists kept for them; the state
   snapshot is rewritten (the engine does it after this module returns).
5. The user's request manifests are deleted; their request ids remain with the time of erasure,
   so explaining one answers 410 naming the reason.

What stays, anonymised: the user's contribution to item aggregates (decayed popularity and recent
event times of an item, online co-visitation weights between items, the online factor model's item
vectors). These hold no user identifier once step 2 is done, and removing them would change the
lists (and the explanations) of every other user: see docs/operations.md.

On Redis the same, without checkpoints (explain needs the embedded log): the user's events are
removed from their partition's stream (the stream is rewritten), with their dedup keys, their
session key is deleted, their item activity keys are anonymised, and Redis is asked to persist
(``BGSAVE`` / ``BGREWRITEAOF`` when persistence is on) so no older RDB/AOF copy is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from insession.checkpoints import (
    CheckpointStore,
    erasure_alias,
    fingerprint_of,
    fold_with_checkpoints,
    replay_from,
    scrub_activity,
)
from insession.config import Settings
from insession.errors import Overloaded, Unsupported
from insession.events import Event
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.features.activity import user_key
from insession.log.redis_stream import RedisStreamEventLog
from insession.log.sqlite import SqliteEventLog
from insession.manifest import RequestLog
from insession.model import ModelBundle
from insession.store import FeatureStore
from insession.store.cached import CachedStore
from insession.store.memory import MemoryFeatureStore
from insession.store.redis import RedisFeatureStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What an erasure removed (counts only: nothing about the user is kept to report)."""

    events: int
    manifests: int
    checkpoints_written: int
    checkpoint_entries: int
    items_anonymised: int
    session: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_through(
    log: SqliteEventLog, checkpoints: CheckpointStore, settings: Settings, model: ModelBundle, positions: Sequence[int]
) -> int:
    """Leave a checkpoint right after each of ``positions`` (folding from the nearest checkpoint
    before the first); returns how many checkpoints exist at those positions afterwards."""
    if not positions:
        return 0
    fp = fingerprint_of(settings, model)
    missing = sorted(set(positions) - set(checkpoints.positions(fp)))
    if not missing:
        return len(positions)
    replay = replay_from(checkpoints, settings, model, missing[0])
    fold_with_checkpoints(log, replay, missing[-1], frozenset(missing))
    return len(set(positions) & set(checkpoints.positions(fp)))


def prepare(
    user_id: str, settings: Settings, model: ModelBundle, log: SqliteEventLog, checkpoints: CheckpointStore | None
) -> None:
    """The long part of an erasure, run before the engine's lock is taken (the log up to the
    user's events does not change): the checkpoints at the user's events. Under the lock
    :func:`forget_embedded` then only adds those of events that arrived meanwhile."""
    if checkpoints is not None:
        events = log.user_events(user_id)
        checkpoint_through(log, checkpoints, settings, model, [p for p, _ in events])


def anonymise_items(store: FeatureStore, user_id: str, items: Sequence[str], ttl_s: int, alias: int) -> int:
    """Replace ``user_id``'s key by ``alias`` in the live activity of ``items``; returns how many changed."""
    key = float(user_key(user_id))
    found = store.get_many(ACTIVITY_NAMESPACE, list(items))
    changed = {}
    for item, raw in zip(items, found, strict=True):
        scrubbed = None if raw is None else scrub_activity(raw, key, alias)
        if scrubbed is not None:
            changed[item] = scrubbed
    store.put_many(ACTIVITY_NAMESPACE, changed, ttl_s)
    return len(changed)


def forget_embedded(
    user_id: str,
    settings: Settings,
    model: ModelBundle,
    log: SqliteEventLog,
    store: MemoryFeatureStore,
    checkpoints: CheckpointStore | None,
    requests: RequestLog | None,
    now_ms: int,
) -> ForgetResult:
    """Erase ``user_id`` from an embedded engine's log, checkpoints, state and manifests (the
    caller holds the engine's lock and rewrites the snapshot afterwards)."""
    events = log.user_events(user_id)
    positions = [p for p, _ in events]
    items = sorted({e.item_id for _, e in events if e.item_id is not None})
    alias = erasure_alias()  # one for the checkpoints and the live store alike
    written = entries = 0
    notes = []
    if checkpoints is not None:
        written = checkpoint_through(log, checkpoints, settings, model, positions)
        entries = checkpoints.erase_user(user_id, items, alias)
    else:
        notes.append("no checkpoint file: other users' earlier lists may no longer explain identically")
    n = log.erase_user(user_id)
    session = store.drop_session(user_id)
    anonymised = anonymise_items(store, user_id, items, settings.state_ttl_s, alias)
    manifests = requests.erase_user(user_id, now_ms) if requests is not None else 0
    logger.info("erased a user: %d events, %d manifests", n, manifests)  # never the user id
    return ForgetResult(n, manifests, written, entries, anonymised, session, notes)


def forget_on_redis(
    user_id: str,
    settings: Settings,
    log: RedisStreamEventLog,
    store: FeatureStore,
    requests: RequestLog | None,
    backlog: int,
    now_ms: int,
) -> ForgetResult:
    """Erase ``user_id`` from the Redis streams and state and from the manifests. Refused (503,
    retry) while the workers have events or item updates still to fold: those hold the user's
    events too."""
    if backlog:
        raise Overloaded(f"forget: the stream workers have {backlog} events or item updates to fold; retry shortly")
    inner = store.inner if isinstance(store, CachedStore) else store
    if not isinstance(inner, RedisFeatureStore):
        raise Unsupported("forget: expected the Redis store")
    removed: list[Event] = log.erase_user(user_id)
    items = sorted({e.item_id for e in removed if e.item_id is not None})
    session = inner.drop_session(user_id)
    anonymised = anonymise_on_redis(inner, user_id, items, erasure_alias())
    if isinstance(store, CachedStore):
        store.invalidate(ACTIVITY_NAMESPACE, items)
    manifests = requests.erase_user(user_id, now_ms) if requests is not None else 0
    notes = persist(inner.client)
    logger.info("erased a user: %d events, %d manifests", len(removed), manifests)
    return ForgetResult(len(removed), manifests, 0, 0, anonymised, session, notes)


#: Compare-and-set: the stream workers may bump the item between our read and write; then we
#: read again rather than overwrite their update. KEYS: the value. ARGV: what was read, the new value.
_CAS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


def anonymise_on_redis(
    store: RedisFeatureStore, user_id: str, items: Sequence[str], alias: int, attempts: int = 20
) -> int:
    """:func:`anonymise_items` on Redis, each item by compare-and-set (one key: Cluster-safe)."""
    key = float(user_key(user_id))
    changed = 0
    for item in items:
        name = store.keys.value(ACTIVITY_NAMESPACE, item)
        for _ in range(attempts):
            raw = store.guard.call("forget", lambda n=name: store.client.get(n))  # type: ignore[misc]
            payload = store.unwrap(raw)
            if payload is None:
                break
            scrubbed = scrub_activity(payload, key, alias)
            if scrubbed is None:
                break
            new = bytes(raw[: len(raw) - len(payload)]) + scrubbed  # the same expiry in front
            if store.guard.call("forget", lambda n=name, r=raw, v=new: store.client.eval(_CAS, 1, n, r, v)):  # type: ignore[misc]
                changed += 1
                break
    return changed


def persist(client: Any) -> list[str]:
    """Ask Redis to replace its persisted copies (RDB, AOF), which still hold the erased data."""
    notes = []
    try:
        if client.config_get("save").get("save", ""):
            client.bgsave()
            notes.append("redis: BGSAVE requested (the RDB file is rewritten without the user)")
        if client.config_get("appendonly").get("appendonly", "no") == "yes":
            client.bgrewriteaof()
            notes.append("redis: BGREWRITEAOF requested (the AOF is rewritten without the user)")
    except Exception as exc:  # a managed Redis may refuse CONFIG: say so, do not fail
        notes.append(f"redis persistence not rewritten ({type(exc).__name__}); rewrite its RDB/AOF copies")
    return notes
