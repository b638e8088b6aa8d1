"""Which tier each surface serves: a rolling p99 per surface steps it down and, after a healthy
hold period, back up.

A surface starts at ``full``. When the p99 of its last ``degrade_window`` requests passes
``degrade_p99_ms`` it moves one tier down (``full`` -> ``fast`` -> ``popular``) and starts a
fresh window, so the next decision is made on latencies of the tier it now serves. While below
``full``, once the window's p99 has stayed at or under ``recover_ratio`` of the threshold for
``recover_hold_s`` seconds, it moves one tier up. Both directions wait for a full window; with
the default of 200 requests the p99 is the third-slowest, so a stray slow request or two never
moves a surface. Pure and clock-injected: tests drive it with a manual
clock and made-up latencies.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from insession.config import SurfaceConfig
from insession.pipeline import TIERS


@dataclass(slots=True)
class _Surface:
    window: deque[float]
    level: int = 0
    healthy_since: float | None = None
    changes: int = 0
    last_p99_ms: float = 0.0


@dataclass
class TierMonitor:
    surfaces: Mapping[str, SurfaceConfig]
    clock: Callable[[], float] = time.monotonic
    _state: dict[str, _Surface] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _get(self, surface: str) -> _Surface:
        found = self._state.get(surface)
        if found is None:
            cfg = self.surfaces[surface]
            found = self._state[surface] = _Surface(deque(maxlen=cfg.degrade_window))
        return found

    def tier(self, surface: str) -> str:
        with self._lock:
            return TIERS[self._get(surface).level] if surface in self.surfaces else TIERS[0]

    def record(self, surface: str, latency_ms: float) -> None:
        """Add one request's latency (ms) and move the surface's tier if its p99 says so."""
        cfg = self.surfaces.get(surface)
        if cfg is None:
            return
        with self._lock:
            s = self._get(surface)
            s.window.append(latency_ms)
            if len(s.window) < cfg.degrade_window:
                return
            ordered = sorted(s.window)
            p99 = ordered[math.ceil(0.99 * len(ordered)) - 1]  # nearest rank
            s.last_p99_ms = p99
            now = self.clock()
            if p99 > cfg.degrade_p99_ms and s.level < len(TIERS) - 1:
                self._move(s, +1)
            elif s.level > 0 and p99 <= cfg.degrade_p99_ms * cfg.recover_ratio:
                if s.healthy_since is None:
                    s.healthy_since = now
                elif now - s.healthy_since >= cfg.recover_hold_s:
                    self._move(s, -1)
            else:
                s.healthy_since = None

    @staticmethod
    def _move(s: _Surface, step: int) -> None:
        s.level += step
        s.window.clear()
        s.healthy_since = None
        s.changes += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per surface seen so far: tier, the last p99 (ms), the window's size and tier changes."""
        with self._lock:
            return {
                name: {
                    "tier": TIERS[s.level],
                    "level": s.level,
                    "p99_ms": round(s.last_p99_ms, 3),
                    "samples": len(s.window),
                    "changes": s.changes,
                }
                for name, s in sorted(self._state.items())
            }
