"""The embedded feature store: dictionaries in process memory, snapshotted to one file.

Snapshot format: one JSON document followed by its SHA-256, written to a temporary file, fsynced
and renamed into place, so a crash mid-write leaves the previous snapshot intact. A snapshot whose
checksum does not match raises :class:`~insession.errors.SnapshotCorrupt`; the engine then
rebuilds state from the event log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from insession.clock import Clock, SystemClock
from insession.errors import SnapshotCorrupt
from insession.sessions import SessionState

SNAPSHOT_FORMAT = 1


class MemoryFeatureStore:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[SessionState, int]] = {}
        self._kv: dict[str, dict[str, tuple[bytes, int]]] = {}
        #: Per-user serving values (the lists a user was shown, the lists kept for reuse).
        self._user_kv: dict[str, dict[str, tuple[bytes, int]]] = {}
        self._position = 0

    # -- protocol ---------------------------------------------------------------------------
    def get_session(self, user_id: str) -> SessionState | None:
        found = self._sessions.get(user_id)
        if found is None:
            return None
        state, expires = found
        if expires <= self._clock.now_ms():
            with self._lock:
                if self._sessions.get(user_id) is found:
                    del self._sessions[user_id]
            return None
        return state

    def get_sessions(self, user_ids: Sequence[str]) -> list[SessionState | None]:
        return [self.get_session(u) for u in user_ids]

    def put_session(self, user_id: str, state: SessionState, ttl_s: int) -> None:
        self._sessions[user_id] = (state, self._clock.now_ms() + ttl_s * 1000)

    def drop_session(self, user_id: str) -> bool:
        """Remove ``user_id``'s state and serving values now (the user is erased); whether there
        was a state."""
        with self._lock:
            self._user_kv.pop(user_id, None)
            return self._sessions.pop(user_id, None) is not None

    def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        table = self._kv.get(namespace, {})
        now = self._clock.now_ms()
        out: list[bytes | None] = []
        for key in keys:
            found = table.get(key)
            out.append(found[0] if found is not None and found[1] > now else None)
        return out

    def put_many(self, namespace: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        expires = self._clock.now_ms() + ttl_s * 1000
        with self._lock:
            table = self._kv.setdefault(namespace, {})
            for key, value in values.items():
                table[key] = (value, expires)

    def get_user(self, user_id: str, names: Sequence[str]) -> tuple[SessionState | None, list[bytes | None]]:
        return self.get_session(user_id), self._user_values(user_id, names, self._clock.now_ms())

    def _user_values(self, user_id: str, names: Sequence[str], now: int) -> list[bytes | None]:
        table = self._user_kv.get(user_id, {})
        return [found[0] if (found := table.get(name)) is not None and found[1] > now else None for name in names]

    def put_user(self, user_id: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        expires = self._clock.now_ms() + ttl_s * 1000
        with self._lock:
            table = self._user_kv.setdefault(user_id, {})
            for name, value in values.items():
                table[name] = (value, expires)

    def get_user_values(self, name: str, user_ids: Sequence[str]) -> list[bytes | None]:
        now = self._clock.now_ms()
        return [self._user_values(user, (name,), now)[0] for user in user_ids]

    def add_counts(self, namespace: str, deltas: Mapping[str, int], ttl_s: int) -> None:
        now = self._clock.now_ms()
        with self._lock:
            table = self._kv.setdefault(namespace, {})
            for key, delta in deltas.items():
                found = table.get(key)
                count = int(found[0]) if found is not None and found[1] > now else 0
                table[key] = (str(count + delta).encode(), now + ttl_s * 1000)

    def get_counts(self, namespace: str, keys: Sequence[str]) -> list[int]:
        return [0 if raw is None else int(raw) for raw in self.get_many(namespace, keys)]

    def applied_position(self) -> int:
        return self._position

    def set_applied_position(self, position: int) -> None:
        self._position = position

    def keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace`` (expired ones included), sorted."""
        return sorted(self._kv.get(namespace, {}))

    # -- housekeeping -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._sessions)

    def users(self) -> list[str]:
        """The users with unexpired state, sorted."""
        now = self._clock.now_ms()
        with self._lock:
            return sorted(k for k, (_, exp) in self._sessions.items() if exp > now)

    def purge_expired(self) -> int:
        """Drop expired entries now; returns how many went."""
        now = self._clock.now_ms()
        with self._lock:
            dead = [k for k, (_, exp) in self._sessions.items() if exp <= now]
            for key in dead:
                del self._sessions[key]
            removed = len(dead)
            for table in self._kv.values():
                gone = [k for k, (_, exp) in table.items() if exp <= now]
                for key in gone:
                    del table[key]
                removed += len(gone)
            for user in list(self._user_kv):
                values = self._user_kv[user]
                gone = [k for k, (_, exp) in values.items() if exp <= now]
                for key in gone:
                    del values[key]
                if not values:
                    del self._user_kv[user]
                removed += len(gone)
        return removed

    def user_values(self) -> int:
        """How many per-user serving values are held (expired ones included)."""
        return sum(len(values) for values in self._user_kv.values())

    def snapshot(self, path: Path) -> None:
        """Write every live entry and the applied position to ``path`` atomically."""
        now = self._clock.now_ms()
        with self._lock:
            doc = {
                "format": SNAPSHOT_FORMAT,
                "applied_position": self._position,
                "sessions": {
                    key: [exp, state.to_dict()] for key, (state, exp) in sorted(self._sessions.items()) if exp > now
                },
                "kv": {
                    ns: {
                        key: [exp, base64.b64encode(val).decode()]
                        for key, (val, exp) in sorted(table.items())
                        if exp > now
                    }
                    for ns, table in sorted(self._kv.items())
                },
                "user_kv": {
                    user: {
                        name: [exp, base64.b64encode(val).decode()]
                        for name, (val, exp) in sorted(values.items())
                        if exp > now
                    }
                    for user, values in sorted(self._user_kv.items())
                },
            }
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(body).hexdigest().encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(body + b"\n" + digest + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Replace the contents with a snapshot; raises ``SnapshotCorrupt`` if it is damaged."""
        try:
            raw = path.read_bytes()
            body, digest, tail = raw.rsplit(b"\n", 2)
            if tail != b"" or hashlib.sha256(body).hexdigest().encode() != digest:
                raise SnapshotCorrupt(f"snapshot {path}: checksum mismatch (truncated or edited)")
            doc = json.loads(body)
            if doc.get("format") != SNAPSHOT_FORMAT:
                raise SnapshotCorrupt(f"snapshot {path}: format {doc.get('format')!r}, expected {SNAPSHOT_FORMAT}")
            sessions = {key: (SessionState.from_dict(state), int(exp)) for key, (exp, state) in doc["sessions"].items()}
            kv = {
                ns: {key: (base64.b64decode(val), int(exp)) for key, (exp, val) in table.items()}
                for ns, table in doc["kv"].items()
            }
            user_kv = {  # absent from snapshots written before per-user serving values were kept
                user: {name: (base64.b64decode(val), int(exp)) for name, (exp, val) in values.items()}
                for user, values in doc.get("user_kv", {}).items()
            }
            position = int(doc["applied_position"])
        except SnapshotCorrupt:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotCorrupt(f"snapshot {path}: unreadable ({type(exc).__name__})") from exc
        with self._lock:
            self._sessions = sessions
            self._kv = kv
            self._user_kv = user_kv
            self._position = position
