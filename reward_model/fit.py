"""Fitting the reward head on labelled pairs, with honest held-out metrics and the accuracy-versus-labels curve.

Split by pair (both orders and repeats of one pair fall on the same side), seeded:
  test  `test_fraction` of the pairs, used only for the reported metrics;
  val   `val_fraction` of the rest, for early stopping;
  train the rest; each head of the ensemble trains on its own bootstrap resample of it.
Training is full-batch AdamW on the Bradley–Terry loss (ties as 1/2); each head keeps the weights of
its best validation epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch

from feedback.images import png_bytes, sha256
from feedback.pairs import pair_key

from .embeddings import EmbeddingCache, clip_fingerprint
from .head import EnsembleHead, bt_loss, features
from .model import ModelConfig, RewardModel, clip_source

LABEL = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass
class FitConfig:
    ensemble_size: int = 4  # heads, each on its own bootstrap resample (uncertainty = their spread)
    hidden: int = 64  # hidden width of each head
    lr: float = 3e-3  # AdamW learning rate (full batch)
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    max_epochs: int = 400  # full-batch steps at most
    patience: int = 40  # a head stops improving after this many epochs without a better validation loss
    test_fraction: float = 0.2  # pairs held out for the reported metrics only
    val_fraction: float = 0.15  # of the remaining pairs: early stopping
    bootstrap: bool = True  # resample the training pairs per head (False: every head sees them all)
    seed: int = 0  # split, bootstrap and initialisation
    min_pairs: int = 8  # refuse to fit on fewer labelled pairs
    # "embedding+tower": the CLIP embedding plus the image tower's pooled last stage (rlcm.clip.Clip.image_features);
    # "embedding": the embedding alone
    image_features: str = "embedding+tower"
    version: str | None = None  # model version; default: UTC time + hash of the weights

    def __post_init__(self):
        if self.ensemble_size < 1 or self.hidden < 1 or self.max_epochs < 1:
            raise ValueError("ensemble_size, hidden and max_epochs must be >= 1")
        if not (0.0 <= self.test_fraction < 1.0 and 0.0 < self.val_fraction < 1.0):
            raise ValueError("test_fraction must be in [0, 1) and val_fraction in (0, 1)")
        if self.image_features not in ("embedding", "embedding+tower"):
            raise ValueError(f"image_features {self.image_features!r}; valid: embedding, embedding+tower")


@dataclass
class PairData:
    """Labelled pairs over a table of unique (sample, prompt) items with their embeddings."""

    img: torch.Tensor  # (U, D) image embeddings
    txt: torch.Tensor  # (U, D) prompt embeddings
    a: torch.Tensor  # (P,) item index of the left sample
    b: torch.Tensor  # (P,) item index of the right sample
    y: torch.Tensor  # (P,) 1 = a preferred, 0 = b, 0.5 = tie
    keys: list[tuple[str, str]]  # (P,) order-free pair identity (sample ids)
    raters: list[str]  # (P,)
    item_ids: list[str] = field(default_factory=list)  # (U,) sample ids

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> "PairData":
        idx = list(idx)
        return PairData(self.img, self.txt, self.a[idx], self.b[idx], self.y[idx],
                        [self.keys[i] for i in idx], [self.raters[i] for i in idx], self.item_ids)


def collect(pairs_or_store, cache: EmbeddingCache) -> PairData:
    """Labelled pairs (skips dropped) with embeddings from `cache`.

    Accepts a `FeedbackStore` (its live comparisons) or an iterable of dicts with `image_a`, `image_b`
    (PIL), `prompt`, `choice` and optionally `rater`; such images are identified by the sha256 of their
    canonical PNG, like stored samples.
    """
    if hasattr(pairs_or_store, "comparisons"):
        store = pairs_or_store
        rows = [(r["sample_a"], r["sample_b"], r["prompt"], r["choice"], r["rater"]) for r in store.comparisons()]
        load = store.load_image
    else:
        images, rows = {}, []
        for i, p in enumerate(pairs_or_store):
            missing = {"image_a", "image_b", "prompt", "choice"} - set(p)
            if missing:
                raise ValueError(f"pair {i} lacks {sorted(missing)}; pairs are dicts with image_a, image_b, prompt, choice")
            ids = []
            for im in (p["image_a"], p["image_b"]):
                sid = sha256(png_bytes(im))
                images.setdefault(sid, im)
                ids.append(sid)
            rows.append((ids[0], ids[1], p["prompt"], p["choice"], p.get("rater", "")))
        load = images.__getitem__
    rows = [r for r in rows if r[3] != "skip"]
    bad = {r[3] for r in rows} - set(LABEL)
    if bad:
        raise ValueError(f"unknown choice(s) {sorted(bad)}; valid: a, b, tie, skip")
    items: dict[tuple[str, str], int] = {}
    for a, b, prompt, _, _ in rows:
        for s in (a, b):
            items.setdefault((s, prompt), len(items))
    item_list = list(items)
    img = cache.images([s for s, _ in item_list], load)
    txt = cache.texts([p for _, p in item_list])
    return PairData(img, txt,
                    torch.tensor([items[(r[0], r[2])] for r in rows], dtype=torch.long),
                    torch.tensor([items[(r[1], r[2])] for r in rows], dtype=torch.long),
                    torch.tensor([LABEL[r[3]] for r in rows]),
                    [pair_key(r[0], r[1]) for r in rows], [r[4] for r in rows], [s for s, _ in item_list])


def split(data: PairData, cfg: FitConfig) -> tuple[list[int], list[int], list[int]]:
    """Train, val and test pair indices; all judgements of one pair land on the same side."""
    groups = list(dict.fromkeys(data.keys))
    order = np.random.default_rng(cfg.seed).permutation(len(groups))
    n_test = int(round(cfg.test_fraction * len(groups))) if cfg.test_fraction > 0 else 0
    n_test = max(n_test, 1) if cfg.test_fraction > 0 else 0
    n_val = max(1, int(round(cfg.val_fraction * (len(groups) - n_test))))
    side = {}
    for rank, g in enumerate(order):
        side[groups[g]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    out = {"train": [], "val": [], "test": []}
    for i, k in enumerate(data.keys):
        out[side[k]].append(i)
    return out["train"], out["val"], out["test"]


def self_agreement(data: PairData) -> dict:
    """How often a rater repeats their own judgement of a pair (orders normalised), over all repeat pairs."""
    by: dict[tuple[str, tuple[str, str]], list[float]] = {}
    for i, key in enumerate(data.keys):
        a_id = data.item_ids[int(data.a[i])]
        y = float(data.y[i]) if a_id == key[0] else 1.0 - float(data.y[i])  # label in the pair's canonical order
        by.setdefault((data.raters[i], key), []).append(y)
    agree = total = 0
    for ys in by.values():
        for u, v in combinations(ys, 2):
            total += 1
            agree += u == v
    return {"self_agreement": agree / total if total else None, "repeat_judgements": total}


@torch.no_grad()
def pair_metrics(head: EnsembleHead, data: PairData) -> dict:
    """Accuracy (ties excluded), log-loss (ties as 1/2) and mean ensemble spread of P(a over b)."""
    if len(data) == 0:
        return {"accuracy": None, "log_loss": None, "n": 0}
    r = head(data.img, data.txt)  # (K, U)
    p = torch.sigmoid(r[:, data.a] - r[:, data.b])  # (K, P)
    pm = p.mean(0).clamp(1e-6, 1 - 1e-6)
    decided = data.y != 0.5
    acc = ((pm[decided] > 0.5) == (data.y[decided] == 1)).float().mean().item() if decided.any() else None
    ll = -(data.y * pm.log() + (1 - data.y) * (1 - pm).log()).mean().item()
    spread = p.std(0).mean().item() if p.shape[0] > 1 else 0.0
    return {"accuracy": acc, "log_loss": ll, "n": len(data), "ensemble_spread": spread}


def train_head(data: PairData, train: list[int], val: list[int], cfg: FitConfig) -> tuple[EnsembleHead, list[int]]:
    """Full-batch AdamW on the BT loss; per-head early stopping on `val`. Returns the head and best epochs."""
    torch.manual_seed(cfg.seed)
    k = cfg.ensemble_size
    head = EnsembleHead(data.txt.shape[1], cfg.hidden, k, seed=cfg.seed, image_dim=data.img.shape[1])
    used = torch.unique(torch.cat([data.a[train], data.b[train]]))
    feats = features(data.img[used], data.txt[used])
    head.mean.copy_(feats.mean(0))
    head.std.copy_(feats.std(0, unbiased=False).clamp_min(1e-6))
    rng = np.random.default_rng(cfg.seed + 1)
    n = len(train)
    w = torch.stack([torch.bincount(torch.from_numpy(rng.integers(0, n, n)), minlength=n).float()
                     if cfg.bootstrap and k > 1 else torch.ones(n) for _ in range(k)])  # (K, n) bootstrap counts
    ta, tb, ty = data.a[train], data.b[train], data.y[train]
    va, vb, vy = data.a[val], data.b[val], data.y[val]
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_loss = torch.full((k,), math.inf)
    best_epoch = [0] * k
    best = [p.detach().clone() for p in head.parameters()]
    stale = torch.zeros(k, dtype=torch.long)
    for epoch in range(cfg.max_epochs):
        r = head(data.img, data.txt)  # (K, U)
        loss = ((bt_loss(r[:, ta], r[:, tb], ty) * w).sum(1) / w.sum(1)).sum()  # sum over heads: independent
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            r = head(data.img, data.txt)
            vloss = bt_loss(r[:, va], r[:, vb], vy).mean(1)  # (K,)
            better = vloss < best_loss - 1e-5
            best_loss = torch.where(better, vloss, best_loss)
            stale = torch.where(better, torch.zeros_like(stale), stale + 1)
            for p, bp in zip(head.parameters(), best):
                bp[better] = p.detach()[better]
            for i in torch.nonzero(better).flatten().tolist():
                best_epoch[i] = epoch + 1
        if bool((stale >= cfg.patience).all()):
            break
    with torch.no_grad():
        for p, bp in zip(head.parameters(), best):
            p.copy_(bp)
    return head, best_epoch


def fit(pairs_or_store, clip, config: FitConfig | None = None, cache: EmbeddingCache | None = None
        ) -> tuple[RewardModel, dict]:
    """Fit a reward model on labelled pairs; returns it and its held-out metrics.

    `clip` is a loaded `rlcm.clip.Clip` or a path/name for `load_clip`. `cache` defaults to the store's
    `data_dir/embeddings` for a store, memory for a list of pairs.
    """
    cfg = config or FitConfig()
    if isinstance(clip, (str, bytes)) or hasattr(clip, "__fspath__"):
        from rlcm.clip import load_clip

        clip = load_clip(clip)
    if cache is None:
        cache = EmbeddingCache(clip, getattr(pairs_or_store, "data_dir", None), cfg.image_features)
    if cache.image_features != cfg.image_features:
        raise ValueError(f"the cache holds {cache.image_features!r} image features, the fit wants {cfg.image_features!r}")
    t0 = time.perf_counter()
    data = collect(pairs_or_store, cache)
    t_embed = time.perf_counter() - t0
    if len(data) < cfg.min_pairs:
        raise ValueError(f"need at least {cfg.min_pairs} labelled (non-skip) pairs to fit, got {len(data)}")
    train, val, test = split(data, cfg)
    if not train or not val:
        raise ValueError(f"{len(set(data.keys))} distinct pairs are too few to split into train, validation and "
                         "test; label more distinct pairs")
    head, epochs = train_head(data, train, val, cfg)
    t_fit = time.perf_counter() - t0 - t_embed
    held = pair_metrics(head, data.subset(test))
    metrics = {
        "accuracy": held["accuracy"], "log_loss": held["log_loss"], "ensemble_spread": held["ensemble_spread"],
        "n_pairs": len(data), "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "n_raters": len(set(data.raters)), "n_samples": len(data.item_ids),
        "train_accuracy": pair_metrics(head, data.subset(train))["accuracy"],
        "val_accuracy": pair_metrics(head, data.subset(val))["accuracy"],
        **self_agreement(data), "best_epochs": epochs,
        "embed_seconds": round(t_embed, 3), "fit_seconds": round(t_fit, 3),
    }
    source, pretrained = clip_source(clip)
    version = cfg.version or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + \
        sha256(b"".join(t.numpy().tobytes() for t in head.state_dict().values()))[:8]
    mc = ModelConfig(version=version, embed_dim=int(data.txt.shape[1]), hidden=cfg.hidden,
                     ensemble_size=cfg.ensemble_size, image_features=cfg.image_features,
                     image_dim=int(data.img.shape[1]),
                     backbone={"name": clip.name, "source": str(source), "pretrained": pretrained,
                               "fingerprint": clip_fingerprint(clip)},
                     data={k: metrics[k] for k in ("n_pairs", "n_train", "n_val", "n_test", "n_raters", "n_samples")})
    return RewardModel(clip, head, mc, metrics), metrics


def evaluate(model: RewardModel, pairs_or_store, cache: EmbeddingCache | None = None) -> dict:
    """Accuracy and log-loss of a fitted model on every labelled pair given (make sure it did not train on them)."""
    if cache is None:
        cache = EmbeddingCache(model.clip, getattr(pairs_or_store, "data_dir", None), model.config.image_features)
    data = collect(pairs_or_store, cache)
    out = pair_metrics(model.head, PairData(data.img.to(model.device), data.txt.to(model.device), data.a, data.b,
                                            data.y, data.keys, data.raters, data.item_ids))
    return {**out, "n_raters": len(set(data.raters)), **self_agreement(data)}


def accuracy_curve(pairs_or_store, clip, sizes=(50, 100, 200, 300, 500), config: FitConfig | None = None,
                   eval_pairs=None, cache: EmbeddingCache | None = None) -> list[dict]:
    """Held-out accuracy after fitting on the first n labels (nested, seeded order) for each n in `sizes`.

    With `eval_pairs` (pairs or a store never used for fitting) every size is scored on that same
    set; otherwise each fit reports its own held-out split.
    """
    cfg = config or FitConfig()
    if isinstance(clip, (str, bytes)) or hasattr(clip, "__fspath__"):
        from rlcm.clip import load_clip

        clip = load_clip(clip)
    if cache is None:
        cache = EmbeddingCache(clip, getattr(pairs_or_store, "data_dir", None), cfg.image_features)
    data = collect(pairs_or_store, cache)
    order = np.random.default_rng(cfg.seed).permutation(len(data)).tolist()
    eval_data = collect(eval_pairs, cache) if eval_pairs is not None else None
    # with a fixed evaluation set, it plays the test split and every label goes to train/val
    split_cfg = FitConfig(**{**cfg.__dict__, "test_fraction": 0.0}) if eval_data is not None else cfg
    out = []
    for n in sizes:
        if n > len(data):
            out.append({"n_labels": n, "accuracy": None, "note": f"only {len(data)} labels"})
            continue
        sub = data.subset(order[:n])
        t0 = time.perf_counter()
        train, val, test = split(sub, split_cfg)
        if not train or not val:
            out.append({"n_labels": n, "accuracy": None, "note": "too few distinct pairs to split"})
            continue
        head, _ = train_head(sub, train, val, cfg)
        seconds = time.perf_counter() - t0
        m = pair_metrics(head, eval_data if eval_data is not None else sub.subset(test))
        out.append({"n_labels": n, "accuracy": m["accuracy"], "log_loss": m["log_loss"], "n_eval": m["n"],
                    "fit_seconds": round(seconds, 3)})
    return out
