"""A bounded memo of decoded stored values, checked against the bytes they came from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class DecodeMemo(Generic[T]):
    """``from_bytes`` with a bounded memo per key: the fold and the request path read the same hot
    items again and again, mostly unchanged since the last read, and decoding each again costs more
    than what they do with it. The memo keeps one decoded value per key with the bytes it came
    from, so a key's older versions never pile up; equal bytes always decode to an equal
    (immutable) value, so it can never serve a wrong one. It is cleared when it reaches
    ``max_entries`` keys."""

    def __init__(self, from_bytes: Callable[[bytes], T], max_entries: int = 10_000) -> None:
        self.from_bytes = from_bytes
        self.max_entries = max_entries
        self._memo: dict[str, tuple[bytes, T]] = {}

    def decode(self, key: str, raw: bytes) -> T:
        found = self._memo.get(key)
        if found is not None and found[0] == raw:
            return found[1]
        value = self.from_bytes(raw)
        self.remember(key, raw, value)
        return value

    def remember(self, key: str, raw: bytes, value: T) -> None:
        """Keep ``value`` as what ``raw`` decodes to (the caller encoded it: ``raw`` is its bytes)."""
        if key not in self._memo and len(self._memo) >= self.max_entries:
            self._memo = {}
        self._memo[key] = (raw, value)

    def __len__(self) -> int:
        return len(self._memo)
