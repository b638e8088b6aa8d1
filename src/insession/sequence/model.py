"""The sequence model at serving time: a small causal transformer over the user's latest interactions.

Training needs PyTorch (``insession.sequence.train``, the ``torch`` extra); serving does not. The
trained weights are exported as plain arrays and this module runs the forward pass with numpy, so
a model directory trained on one machine serves on another without torch, autograd or a GPU.

Input tokens are the user's latest ``max_len`` item interactions across sessions (immediate repeats
of the same item collapsed, as in training), each the sum of five embeddings: the item, its
category, its position in the window, the event type, and a bucket of the time gap since the
previous token (which tells the model where one session ends and the next begins). The category
carries what a sparse catalog cannot: on a shop where most items are seen once or twice, the next
*category* is learnable when the next item is not. The output at the last token, with a constant 1
appended, is the *sequence vector*; an item's score is its inner product with the item's output
vector ``[item embedding + category embedding, bias]``, so the same vectors feed an inner-product
ANN index.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.clock import MINUTE_MS
from insession.events import EventType
from insession.sessions import SessionState

#: Event types a sequence is made of, with their token codes (0 is padding).
TYPE_CODES: Mapping[str, int] = {
    EventType.VIEW.value: 1,
    EventType.CLICK.value: 2,
    EventType.ADD_TO_CART.value: 3,
    EventType.PURCHASE.value: 4,
}
N_TYPES = len(TYPE_CODES) + 1
#: Upper edges (ms) of the gap buckets 1..; bucket 0 is the first token of a user's timeline.
GAP_EDGES_MS = (MINUTE_MS, 10 * MINUTE_MS, 30 * MINUTE_MS, 24 * 60 * MINUTE_MS)
N_GAPS = len(GAP_EDGES_MS) + 2


@dataclass(frozen=True, slots=True)
class Architecture:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50

    def __post_init__(self) -> None:
        if self.dim < 1 or self.layers < 1 or self.heads < 1 or self.max_len < 2:
            raise ValueError(f"sequence architecture: expected positive sizes and max_len >= 2, got {self}")
        if self.dim % self.heads:
            raise ValueError(f"sequence architecture: dim {self.dim} is not divisible by heads {self.heads}")


def gap_buckets(ts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Bucket of the gap to the previous token; the first token gets bucket 0."""
    out = np.zeros(len(ts), dtype=np.int64)
    if len(ts) > 1:
        out[1:] = 1 + np.searchsorted(np.asarray(GAP_EDGES_MS), np.diff(ts), side="right")
    return out


@dataclass(frozen=True, slots=True)
class Tokens:
    items: npt.NDArray[np.int64]  # dense item index + 1 (0 is padding)
    types: npt.NDArray[np.int64]
    gaps: npt.NDArray[np.int64]  # bucket of the gap to the previous token of the whole timeline
    ts: npt.NDArray[np.int64]

    def last(self, n: int) -> Tokens:
        return Tokens(self.items[-n:], self.types[-n:], self.gaps[-n:], self.ts[-n:])


def timeline(records: Iterable[tuple[str, str, int]], index: Mapping[str, int]) -> Tokens:
    """``(item_id, event type, ts)`` records, in time order, as tokens: types without a code and
    unknown items left out, an immediate repeat of the same item collapsed into its first token.
    Training and serving both build their input with this function."""
    items: list[int] = []
    types: list[int] = []
    stamps: list[int] = []
    for item_id, event_type, stamp in records:
        code = TYPE_CODES.get(event_type)
        idx = index.get(item_id)
        if code is None or idx is None or (items and items[-1] == idx + 1):
            continue
        items.append(idx + 1)
        types.append(code)
        stamps.append(stamp)
    ts = np.asarray(stamps, dtype=np.int64)
    return Tokens(np.asarray(items, dtype=np.int64), np.asarray(types, dtype=np.int64), gap_buckets(ts), ts)


def tokens_of(state: SessionState | None, index: Mapping[str, int], max_len: int) -> Tokens:
    """The user's latest ``max_len`` tokens: the model's input for one request."""
    if state is None:
        return timeline((), index)
    records = ((i.item_id, i.type.value, i.ts) for i in (*state.history, *state.events))
    return timeline(records, index).last(max_len)


def _layer_norm(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> Any:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w + b


class SequenceModel:
    """Weights (named as in the training module) and the numpy forward pass."""

    def __init__(
        self,
        arch: Architecture,
        weights: Mapping[str, npt.NDArray[np.float32]],
        item_category: npt.NDArray[np.int64],
        meta: dict[str, Any],
    ):
        self.arch = arch
        self.w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        #: Category token per item token (index 0 is padding; category 0 is "none").
        self.item_category = np.ascontiguousarray(item_category, dtype=np.int64)
        self.meta = meta
        #: Input embedding per item token: the item's own plus its category's.
        self.item_inputs = self.w["item.weight"] + self.w["category.weight"][self.item_category]
        #: Output vector per dense item index: ``[item + category embedding, bias]``.
        self.item_vectors = np.ascontiguousarray(np.hstack([self.item_inputs[1:], self.w["item_bias"][1:, None]]))

    @property
    def n_items(self) -> int:
        return len(self.item_vectors)

    def encode(self, tokens: Tokens) -> npt.NDArray[np.float32]:
        """The sequence vector ``[h, 1]``; all zeros for an empty sequence."""
        n = len(tokens.items)
        d, heads = self.arch.dim, self.arch.heads
        if n == 0:
            return np.zeros(d + 1, dtype=np.float32)
        w = self.w
        x = self.item_inputs[tokens.items] + w["pos.weight"][:n] + w["kind.weight"][tokens.types]
        x = x + w["gap.weight"][tokens.gaps]
        hd = d // heads
        causal = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        for i in range(self.arch.layers):
            p = f"blocks.{i}."
            last = i == self.arch.layers - 1
            h = _layer_norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"])
            qkv = h @ w[p + "qkv.weight"].T + w[p + "qkv.bias"]
            q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
            rows = slice(n - 1, n) if last else slice(0, n)  # the last layer only needs the last query
            q = q[rows].reshape(-1, heads, hd).transpose(1, 0, 2)
            k = k.reshape(n, heads, hd).transpose(1, 2, 0)
            v = v.reshape(n, heads, hd).transpose(1, 0, 2)
            att = q @ k / np.sqrt(hd) + causal[rows]
            att = np.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            out = (att @ v).transpose(1, 0, 2).reshape(-1, d)
            x = x[rows] + out @ w[p + "proj.weight"].T + w[p + "proj.bias"]
            h = _layer_norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"])
            hidden = np.maximum(h @ w[p + "ff1.weight"].T + w[p + "ff1.bias"], 0.0)
            x = x + hidden @ w[p + "ff2.weight"].T + w[p + "ff2.bias"]
        h_last = _layer_norm(x[-1], w["ln.weight"], w["ln.bias"])
        return np.append(h_last, np.float32(1.0)).astype(np.float32)

    def scores(self, vector: npt.NDArray[np.float32], items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Scores of dense item indices for a sequence vector (higher is more likely next)."""
        return np.asarray(self.item_vectors[items] @ vector, dtype=np.float32)

    def padded(self, n_items: int) -> SequenceModel:
        """The same model over ``n_items`` items, the ones beyond its own with zero vectors (no
        category, no bias): items that joined after training carry no sequence signal."""
        extra = n_items - self.n_items
        if extra <= 0:
            return self
        w = dict(self.w)
        w["item.weight"] = np.vstack([w["item.weight"], np.zeros((extra, w["item.weight"].shape[1]), np.float32)])
        w["item_bias"] = np.concatenate([w["item_bias"], np.zeros(extra, np.float32)])
        category = np.concatenate([self.item_category, np.zeros(extra, np.int64)])
        padded = SequenceModel(self.arch, w, category, self.meta)
        padded.item_inputs[-extra:] = 0.0  # not even the "no category" embedding: unknown
        padded.item_vectors[-extra:] = 0.0
        return padded

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        header = json.dumps({"arch": asdict(self.arch), "meta": self.meta}, sort_keys=True)
        arrays: dict[str, Any] = {
            "__header__": np.frombuffer(header.encode(), dtype=np.uint8),
            "__item_category__": self.item_category,
            **self.w,
        }
        np.savez(buf, **arrays)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> SequenceModel:
        arrays = np.load(io.BytesIO(data))
        header = json.loads(bytes(arrays["__header__"]).decode())
        weights = {k: arrays[k] for k in arrays.files if not k.startswith("__")}
        return SequenceModel(Architecture(**header["arch"]), weights, arrays["__item_category__"], header["meta"])


def remap_rows(
    table: npt.NDArray[np.float32], old_keys: Sequence[str], new_keys: Sequence[str], seed: int
) -> npt.NDArray[np.float32]:
    """Rows 1.. of an embedding table (row 0 is padding) moved to a new key order; rows of new keys
    start small and random (or zero, for a 1-d table of biases)."""
    position = {key: i for i, key in enumerate(old_keys)}
    old_rows = np.array([position.get(k, -1) for k in new_keys], dtype=np.int64)
    known = old_rows >= 0
    shape = (len(new_keys) + 1, *table.shape[1:])
    if table.ndim > 1:
        new = (np.random.default_rng(seed).standard_normal(shape) * 0.02).astype(np.float32)
    else:
        new = np.zeros(shape, np.float32)
    new[0] = table[0]
    new[1:][known] = table[1:][old_rows[known]]
    return new
