"""Training the sequence model on the CPU with PyTorch (the optional ``torch`` extra).

Every user's interactions form one timeline (sessions in order, so earlier sessions are context
for the next one). Timelines are cut into windows of ``max_len + 1`` tokens; the causal transformer
predicts each token from the ones before it in its window, so every transition is a training
example once. The loss is a softmax over all items for catalogs up to ``full_softmax_max_items``
and a sampled softmax (shared negatives drawn by popularity^0.75, log-Q corrected, accidental hits
removed) above that, which keeps the cost of a step independent of catalog size.

Early stopping watches MRR@20 on the latest ``validation_fraction`` of the targets (by time): those
targets are never trained on until the best epoch is chosen, then one more epoch runs over all of
them so the served model has seen the newest behaviour. A warm start (``init``) continues from an
earlier model for ``finetune_epochs`` instead, which is how training refits the model on later cuts
of the data without starting over.

Given a seed and a thread count the result is the same bytes every run: seeded initialisation,
dropout and negatives, a seeded batch order, deterministic kernels, fixed threads.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.catalog import Catalog
from insession.events import Event
from insession.sequence.model import N_GAPS, N_TYPES, Architecture, SequenceModel, Tokens, remap_rows, timeline

Progress = Callable[[str, float], None]
INSTALL_HINT = 'pip install "insession[torch]"'


def torch_missing() -> str | None:
    """Why the sequence model cannot be trained here, or ``None`` when it can."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return f"PyTorch is not installed ({INSTALL_HINT}); the sequence model is off"
    return None


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    """Training parameters of the sequence model; recorded in the model's params."""

    #: Off by default: on the data at hand it did not beat the engine without it (see docs/evaluation.md).
    enabled: bool = False
    dim: int = 64
    layers: int = 1
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.3
    lr: float = 3e-3
    batch_size: int = 128
    max_epochs: int = 30
    patience: int = 2
    finetune_epochs: int = 1
    validation_fraction: float = 0.1
    validation_max_targets: int = 5000
    full_softmax_max_items: int = 30_000
    negatives: int = 2048
    threads: int = 2
    seed: int = 0
    init_scale: float = 0.05
    #: Item embeddings start from the co-occurrence embeddings (``training.item_embeddings``),
    #: times this scale (0: random). On YOOCHOOSE's train_tr -> train_valid this took the model
    #: alone from MRR@20 0.27 to 0.33: 29k transitions are too few to learn item vectors from scratch.
    cooccurrence_init: float = 2.0
    max_seconds: float = 900.0

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"sequence.validation_fraction: expected 0 <= x < 1, got {self.validation_fraction}")
        for name in ("batch_size", "max_epochs", "negatives", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"sequence.{name}: expected >= 1, got {getattr(self, name)}")
        self.architecture()  # validates the sizes

    def architecture(self) -> Architecture:
        return Architecture(self.dim, self.layers, self.heads, self.max_len)


def user_timelines(events: Iterable[Event], index: Mapping[str, int]) -> list[Tokens]:
    """One timeline per user (users sorted by id), events in time order (stable)."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if event.item_id is not None:
            by_user[event.user_id].append(event)
    out = []
    for user in sorted(by_user):
        ordered = sorted(by_user[user], key=lambda e: e.ts)
        line = timeline(((e.item_id or "", e.type.value, e.ts) for e in ordered), index)
        if len(line.items) >= 2:
            out.append(line)
    return out


@dataclass(slots=True)
class Windows:
    """Training windows, right-padded to ``max_len``: inputs, targets and each target's time."""

    items: npt.NDArray[np.int64]
    types: npt.NDArray[np.int64]
    gaps: npt.NDArray[np.int64]
    targets: npt.NDArray[np.int64]
    target_ts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]


def windows(timelines: Sequence[Tokens], max_len: int) -> Windows:
    starts = [(t, s) for t, line in enumerate(timelines) for s in range(0, len(line.items) - 1, max_len)]
    n = len(starts)
    shape = (n, max_len)
    out = Windows(
        items=np.zeros(shape, dtype=np.int64),
        types=np.zeros(shape, dtype=np.int64),
        gaps=np.zeros(shape, dtype=np.int64),
        targets=np.zeros(shape, dtype=np.int64),
        target_ts=np.zeros(shape, dtype=np.int64),
        lengths=np.zeros(n, dtype=np.int64),
    )
    for row, (t, s) in enumerate(starts):
        line = timelines[t]
        end = min(s + max_len + 1, len(line.items))
        k = end - s - 1
        out.items[row, :k] = line.items[s : end - 1]
        out.types[row, :k] = line.types[s : end - 1]
        out.gaps[row, :k] = line.gaps[s : end - 1]
        out.targets[row, :k] = line.items[s + 1 : end]
        out.target_ts[row, :k] = line.ts[s + 1 : end]
        out.lengths[row] = k
    return out


def fit_sequence(
    timelines: Sequence[Tokens],
    catalog: Catalog,
    cfg: SequenceConfig,
    init: tuple[SequenceModel, Catalog] | None = None,
    progress: Progress = lambda stage, f: None,
    item_vectors: npt.NDArray[np.float32] | None = None,
) -> tuple[SequenceModel, dict[str, Any]]:
    """Train the sequence model on ``timelines`` (tokens of ``catalog``'s items), or continue
    training ``init``: a model and the catalog it was trained on, whose items and categories are
    matched to this one's by id and name. Without ``init``, ``item_vectors`` (one row per catalog
    item) seed the item embeddings, scaled by ``cfg.cooccurrence_init``."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _fit(torch, timelines, catalog, cfg, init, progress, item_vectors)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _fit(
    torch: Any,
    timelines: Sequence[Tokens],
    catalog: Catalog,
    cfg: SequenceConfig,
    init: tuple[SequenceModel, Catalog] | None,
    progress: Progress,
    item_vectors: npt.NDArray[np.float32] | None = None,
) -> tuple[SequenceModel, dict[str, Any]]:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    n_items = len(catalog)
    arch = cfg.architecture()
    item_category = np.concatenate([[0], catalog.category_codes.astype(np.int64) + 1])
    net = _network(torch, item_category, len(catalog.category_names), arch, cfg.dropout, cfg.init_scale)
    if init is not None:
        old, old_catalog = init
        weights = dict(old.w)
        for name in ("item.weight", "item_bias"):
            weights[name] = remap_rows(old.w[name], old_catalog.ids, catalog.ids, cfg.seed)
        weights["category.weight"] = remap_rows(
            old.w["category.weight"], old_catalog.category_names, catalog.category_names, cfg.seed + 1
        )
        net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    elif item_vectors is not None and cfg.cooccurrence_init > 0:
        if item_vectors.shape[0] != n_items:
            raise ValueError(f"item_vectors: expected {n_items} rows (one per item), got {item_vectors.shape[0]}")
        width = min(arch.dim, item_vectors.shape[1])
        seed_rows = torch.from_numpy(np.ascontiguousarray(item_vectors[:, :width], dtype=np.float32))
        with torch.no_grad():
            net.item.weight[1:, :width] = seed_rows * cfg.cooccurrence_init
    data = windows(timelines, arch.max_len)
    tensors = {name: torch.from_numpy(getattr(data, name)) for name in ("items", "types", "gaps", "targets")}
    valid = data.targets > 0
    counts = np.bincount(data.targets[valid], minlength=n_items + 1)[1:].astype(np.float64)
    stats: dict[str, Any] = {
        "timelines": len(timelines),
        "windows": len(data.lengths),
        "transitions": int(valid.sum()),
        "loss": "full softmax" if n_items <= cfg.full_softmax_max_items else f"sampled softmax ({cfg.negatives})",
    }
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sampler = _Sampler(torch, counts, cfg) if n_items > cfg.full_softmax_max_items else None
    rng = np.random.default_rng(cfg.seed)

    def epoch(mask: npt.NDArray[np.bool_]) -> float:
        net.train()
        rows = np.flatnonzero(mask.any(axis=1))
        batches = _batches(rows, data.lengths, cfg.batch_size, rng)
        total, seen = 0.0, 0
        for b in batches:
            k = int(data.lengths[b].max())
            idx = torch.from_numpy(b)
            out = net(tensors["items"][idx, :k], tensors["types"][idx, :k], tensors["gaps"][idx, :k])
            sel = torch.from_numpy(mask[b, :k])
            h, t = out[sel], tensors["targets"][idx, :k][sel]
            loss = _loss(torch, net, h, t, sampler)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(t)
            seen += len(t)
        return total / max(seen, 1)

    history: list[dict[str, float]] = []
    if init is None and cfg.validation_fraction > 0 and valid.sum() >= 50:
        cut = int(np.quantile(data.target_ts[valid], 1 - cfg.validation_fraction))
        train_mask, val_mask = valid & (data.target_ts < cut), valid & (data.target_ts >= cut)
        val_rows, val_cols = _validation_targets(val_mask, cfg.validation_max_targets, cfg.seed)
        best, best_state, since = -1.0, None, 0
        for e in range(cfg.max_epochs):
            loss = epoch(train_mask)
            mrr, hr = _validate(torch, net, data, tensors, val_rows, val_cols)
            history.append(
                {"epoch": e + 1, "loss": round(loss, 4), "val_MRR@20": round(mrr, 4), "val_HR@20": round(hr, 4)}
            )
            progress("sequence model", (e + 1) / cfg.max_epochs)
            if mrr > best:
                best, since = mrr, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                since += 1
            if since >= cfg.patience or time.perf_counter() - started > cfg.max_seconds:
                break
        assert best_state is not None
        net.load_state_dict(best_state)
        best_row = max(history, key=lambda h: h["val_MRR@20"])
        stats["best_epoch"] = best_row["epoch"]
        stats["val_MRR@20"], stats["val_HR@20"] = round(best, 4), best_row["val_HR@20"]
        stats["validation_cut_ms"] = cut
        finetune = 1  # the held-out newest targets, once, before serving
    else:
        finetune = cfg.finetune_epochs if init is not None else cfg.max_epochs
    for e in range(finetune):
        loss = epoch(valid)
        history.append({"epoch": len(history) + 1, "loss": round(loss, 4), "all_targets": 1.0})
        progress("sequence model", (e + 1) / finetune)
    stats["epochs"] = history
    stats["seconds"] = round(time.perf_counter() - started, 2)
    weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    meta = {"config": asdict(cfg)}
    return SequenceModel(arch, weights, item_category, meta), stats


def _batches(
    rows: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], size: int, rng: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    """Windows of similar length batched together (little padding), batches in a seeded order."""
    shuffled = rows[rng.permutation(len(rows))]
    ordered = shuffled[np.argsort(lengths[shuffled], kind="stable")]
    batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _validation_targets(
    mask: npt.NDArray[np.bool_], limit: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    rows, cols = np.nonzero(mask)
    if len(rows) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def _validate(
    torch: Any, net: Any, data: Windows, tensors: dict[str, Any], rows: npt.NDArray[np.int64], cols: Any
) -> tuple[float, float]:
    """MRR@20 and HR@20 of the validation targets, every item scored."""
    net.eval()
    ranks: list[npt.NDArray[np.int64]] = []
    with torch.no_grad():
        items = net.outputs()
        bias = net.item_bias[1:]
        for lo in range(0, len(rows), 512):
            r, c = rows[lo : lo + 512], cols[lo : lo + 512]
            uniq, inverse = np.unique(r, return_inverse=True)
            k = int(data.lengths[uniq].max())
            idx = torch.from_numpy(uniq)
            out = net(tensors["items"][idx, :k], tensors["types"][idx, :k], tensors["gaps"][idx, :k])
            h = out[torch.from_numpy(inverse), torch.from_numpy(c)]
            scores = h @ items.T + bias
            target = torch.from_numpy(data.targets[r, c] - 1)
            mine = scores.gather(1, target[:, None])
            ranks.append((scores > mine).sum(dim=1).numpy())
    rank = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    hit = rank < 20
    return float(np.where(hit, 1.0 / (rank + 1), 0.0).mean()), float(hit.mean())


class _Sampler:
    """Shared negatives by popularity^0.75, with their log-probabilities for the log-Q correction."""

    def __init__(self, torch: Any, counts: npt.NDArray[np.float64], cfg: SequenceConfig) -> None:
        q = (counts + 1.0) ** 0.75
        q /= q.sum()
        self.torch = torch
        self.q = torch.from_numpy(q)
        self.log_sq = torch.from_numpy(np.log(q * cfg.negatives).astype(np.float32))
        self.n = cfg.negatives
        self.gen = torch.Generator().manual_seed(cfg.seed + 7)

    def draw(self) -> Any:
        return self.torch.multinomial(self.q, self.n, replacement=True, generator=self.gen) + 1


def _loss(torch: Any, net: Any, h: Any, targets: Any, sampler: _Sampler | None) -> Any:
    if sampler is None:
        logits = h @ net.outputs().T + net.item_bias[1:]
        return torch.nn.functional.cross_entropy(logits, targets - 1)
    neg = sampler.draw()
    pos = (h * net.embed(targets)).sum(-1) + net.item_bias[targets] - sampler.log_sq[targets - 1]
    negs = h @ net.embed(neg).T + net.item_bias[neg] - sampler.log_sq[neg - 1]
    negs = negs.masked_fill(neg[None, :] == targets[:, None], -math.inf)
    logits = torch.cat([pos[:, None], negs], dim=1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))


def _network(
    torch: Any,
    item_category: npt.NDArray[np.int64],
    n_categories: int,
    arch: Architecture,
    dropout: float,
    init_scale: float,
) -> Any:
    n_items = len(item_category) - 1
    nn = torch.nn
    d, heads = arch.dim, arch.heads

    class Block(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
            self.drop = nn.Dropout(dropout)

        def forward(self, x: Any, mask: Any) -> Any:
            b, n, _ = x.shape
            hd = d // heads
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (t.view(b, n, heads, hd).transpose(1, 2) for t in (q, k, v))
            att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd) + mask, dim=-1)
            out = (self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)
            x = x + self.drop(self.proj(out))
            return x + self.drop(self.ff2(torch.relu(self.ff1(self.ln2(x)))))

    class Net(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.item = nn.Embedding(n_items + 1, d, padding_idx=0)
            nn.init.normal_(self.item.weight, std=init_scale)
            with torch.no_grad():
                self.item.weight[0].zero_()
            self.item_bias = nn.Parameter(torch.zeros(n_items + 1))
            self.category = nn.Embedding(n_categories + 1, d)
            self.register_buffer("item_category", torch.from_numpy(item_category), persistent=False)
            self.pos = nn.Embedding(arch.max_len, d)
            self.kind = nn.Embedding(N_TYPES, d)
            self.gap = nn.Embedding(N_GAPS, d)
            for emb in (self.category, self.pos, self.kind, self.gap):
                nn.init.normal_(emb.weight, std=init_scale)
            self.blocks = nn.ModuleList(Block() for _ in range(arch.layers))
            self.ln = nn.LayerNorm(d)
            self.drop = nn.Dropout(dropout)

        def embed(self, items: Any) -> Any:
            """Item tokens' embeddings: the item's own plus its category's."""
            return self.item(items) + self.category(self.item_category[items])

        def outputs(self) -> Any:
            """Every item's output embedding, by dense index."""
            return self.item.weight[1:] + self.category(self.item_category[1:])

        def forward(self, items: Any, types: Any, gaps: Any) -> Any:
            n = items.shape[1]
            x = self.drop(self.embed(items) + self.pos.weight[:n] + self.kind(types) + self.gap(gaps))
            mask = torch.triu(torch.full((n, n), -math.inf), diagonal=1)
            for block in self.blocks:
                x = block(x, mask)
            return self.ln(x)

    return Net()
