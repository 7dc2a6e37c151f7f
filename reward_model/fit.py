"""Fitting the reward head on labelled pairs, with honest held-out metrics and the accuracy-versus-labels curve.

Split by pair (both orders and repeats of one pair fall on the same side), seeded:
  test  `test_fraction` of the pairs, used only for the reported metrics (accuracy with its 95% Wilson
        interval and n, reward_model.metrics);
  val   `val_fraction` of the rest, for early stopping of MLP heads (linear heads train on it too);
  train the rest; each head of the ensemble trains on its own bootstrap resample of it.
Linear heads (the default) average convex Bradley–Terry fits over candidate priors by their cross-validated
evidence on unseen prompts (reward_model.linear). MLP heads train by full-batch AdamW on the BT loss (ties
as 1/2) and keep the weights of their best validation epoch. `fit` and `accuracy_curve` share `fit_data`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np
import torch

from feedback.images import png_bytes, sha256
from feedback.pairs import LABEL, pair_key

from .embeddings import EmbeddingCache, check_image_features, clip_fingerprint, feature_cues, feature_groups
from .head import EnsembleHead, bt_loss, features
from .linear import SCALES, Prior, folds_by_group, train_linear
from .metrics import accuracy_summary
from .model import ModelConfig, RewardModel, clip_source


@dataclass
class FitConfig:
    ensemble_size: int = 4  # heads, each on its own bootstrap resample (uncertainty = their spread)
    # 0: linear heads, their prior chosen by prompt-grouped cross-validation (reward_model.linear; the default,
    # measured best at about 100 labels); > 0: MLP heads of this width, AdamW with early stopping
    hidden: int = 0
    # linear heads: the candidate priors are every combination of a column set, a scale and an L2 strength
    # (reward_model.linear); the column sets are each group of image columns alone (embedding, colour, layout,
    # ...; see embeddings.feature_groups) when `single_groups`, all of them, and all plus the image x prompt
    # columns when `prompt_interaction`
    scales: tuple[str, ...] = ("items", "geo", "pairs")  # column scales
    l2: tuple[float, ...] = (0.01, 0.1, 1.0)  # penalties on the squared scaled weights
    single_groups: bool = True
    prompt_interaction: bool = True
    # also each perceptual cue alone (perceptual.CUES: the mean shade, the subject's size and place, the
    # background): a few columns that a handful of decided pairs can pin down
    cues: bool = True
    cv_folds: int = 5  # folds by prompt for scoring the priors
    # with linear heads, also report accuracy cross-validated by prompt over every pair (each pair judged by a
    # head fitted without its prompt): n is all decided pairs, so the interval is tight enough to gate rounds
    # at tens of labels, where a 20% test split holds a handful of pairs
    cv_accuracy: bool = True
    # MLP heads
    lr: float = 3e-3  # AdamW learning rate (full batch)
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    max_epochs: int = 400  # full-batch steps at most
    patience: int = 40  # a head stops improving after this many epochs without a better validation loss
    val_fraction: float = 0.15  # of the non-test pairs: early stopping (linear heads train on them too)
    test_fraction: float = 0.2  # pairs held out for the reported metrics only
    bootstrap: bool = True  # resample the training pairs per head (False: every head sees them all)
    seed: int = 0  # split, folds, bootstrap and initialisation
    min_pairs: int = 8  # refuse to fit on fewer labelled pairs
    # one of reward_model.embeddings.IMAGE_FEATURES; "embedding+perceptual" (the CLIP embedding and generic
    # colour / layout / subject / texture statistics) measured best within a prompt at about 100 labels
    image_features: str = "embedding+perceptual"
    version: str | None = None  # model version; default: UTC time + hash of the weights

    def __post_init__(self):
        if self.ensemble_size < 1 or self.hidden < 0 or self.max_epochs < 1 or self.cv_folds < 2:
            raise ValueError("ensemble_size and max_epochs must be >= 1, hidden >= 0, cv_folds >= 2")
        bad = set(self.scales) - set(SCALES)
        if bad or not self.scales:
            raise ValueError(f"scales {list(self.scales)!r}; valid: a non-empty subset of {', '.join(SCALES)}")
        if not self.l2 or min(self.l2) <= 0:
            raise ValueError(f"l2 {list(self.l2)!r}: give one or more positive values")
        if not (0.0 <= self.test_fraction < 1.0 and 0.0 < self.val_fraction < 1.0):
            raise ValueError("test_fraction must be in [0, 1) and val_fraction in (0, 1)")
        check_image_features(self.image_features)

    def priors(self, image_groups: list[str], cues: list[str] = ()) -> list[Prior]:
        """The candidate priors of linear heads over image column groups named `image_groups` (and column sets
        named `cues`, each alone when `self.cues`)."""
        sets = [(g,) for g in image_groups] if self.single_groups and len(image_groups) > 1 else []
        sets += [(c,) for c in cues] if self.cues else []
        sets.append(tuple(image_groups))
        if self.prompt_interaction:
            sets.append((*image_groups, "interaction"))
        return [Prior(c, s, l2) for c in sets for s in self.scales for l2 in self.l2]


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
    item_prompts: list[str] = field(default_factory=list)  # (U,) prompts

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> "PairData":
        idx = list(idx)
        return PairData(self.img, self.txt, self.a[idx], self.b[idx], self.y[idx],
                        [self.keys[i] for i in idx], [self.raters[i] for i in idx], self.item_ids, self.item_prompts)


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
                    [pair_key(r[0], r[1]) for r in rows], [r[4] for r in rows], [s for s, _ in item_list],
                    [p for _, p in item_list])


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
    """Accuracy with its 95% Wilson interval over the decided pairs (ties counted as in reward_model.metrics),
    log-loss over all pairs (ties as 1/2) and the mean ensemble spread of P(a over b)."""
    if len(data) == 0:
        return {**accuracy_summary(0, 0), "log_loss": None, "n": 0, "n_ties": 0, "ensemble_spread": None}
    r = head(data.img, data.txt)  # (K, U)
    p = torch.sigmoid(r[:, data.a] - r[:, data.b])  # (K, P)
    pm = p.mean(0).clamp(1e-6, 1 - 1e-6)
    decided = data.y != 0.5
    said_a = pm[decided]
    hits = torch.where(said_a == 0.5, 0.5, ((said_a > 0.5) == (data.y[decided] == 1)).float()).sum().item()
    ll = -(data.y * pm.log() + (1 - data.y) * (1 - pm).log()).mean().item()
    spread = p.std(0).mean().item() if p.shape[0] > 1 else 0.0
    return {**accuracy_summary(hits, int(decided.sum())), "log_loss": ll, "n": len(data),
            "n_ties": int((~decided).sum()), "ensemble_spread": spread}


def bootstrap_counts(n: int, cfg: FitConfig) -> torch.Tensor:
    """(K, n) how often each head sees each training pair: a bootstrap resample per head (all ones without)."""
    rng = np.random.default_rng(cfg.seed + 1)
    k = cfg.ensemble_size
    return torch.stack([torch.bincount(torch.from_numpy(rng.integers(0, n, n)), minlength=n).float()
                        if cfg.bootstrap and k > 1 else torch.ones(n) for _ in range(k)])


def train_linear_head(data: PairData, train: list[int], cfg: FitConfig) -> tuple[EnsembleHead, list[dict]]:
    """Linear heads averaged over `cfg.priors` by their prompt-grouped CV evidence (reward_model.linear).
    Returns the head and the priors holding at least 1% of the weight, with their CV log-loss, heaviest first."""
    head = EnsembleHead(data.txt.shape[1], 0, cfg.ensemble_size, image_dim=data.img.shape[1])
    feats = features(data.img, data.txt)  # (U, F): [image (I), prompt (D), embedding * prompt (D)]
    a, b = data.a[train], data.b[train]
    i, d = data.img.shape[1], data.txt.shape[1]
    col = torch.arange(feats.shape[1])
    columns = {name: (col >= s.start) & (col < s.stop)
               for name, s in feature_groups(cfg.image_features, i, d).items()}
    image_groups = list(columns)
    columns["interaction"] = col >= i + d
    cues = feature_cues(cfg.image_features, i, d)
    columns.update({c: torch.isin(col, torch.tensor(idx)) for c, idx in cues.items()})
    groups = [data.item_prompts[int(j)] for j in a] if data.item_prompts else [str(int(j)) for j in a]
    w, table = train_linear(feats, a, b, data.y[train], groups, columns, cfg.priors(image_groups, list(cues)),
                            bootstrap_counts(len(train), cfg), cfg.cv_folds, cfg.seed)
    table = sorted((t for t in table if t["weight"] >= 0.01), key=lambda t: -t["weight"])  # the ones that count
    used = torch.unique(torch.cat([a, b]))
    with torch.no_grad():
        head.mean.copy_(feats[used].mean(0))
        head.std.copy_(feats[used].std(0, unbiased=False).clamp_min(1e-6))
        head.w1.copy_((w * head.std)[..., None])  # the head multiplies standardised features
    return head, table


def train_head(data: PairData, train: list[int], val: list[int], cfg: FitConfig) -> tuple[EnsembleHead, list[int]]:
    """MLP heads: full-batch AdamW on the BT loss; per-head early stopping on `val`. Returns the head and best
    epochs."""
    torch.manual_seed(cfg.seed)
    k = cfg.ensemble_size
    head = EnsembleHead(data.txt.shape[1], cfg.hidden, k, seed=cfg.seed, image_dim=data.img.shape[1])
    used = torch.unique(torch.cat([data.a[train], data.b[train]]))
    feats = features(data.img[used], data.txt[used])
    head.mean.copy_(feats.mean(0))
    head.std.copy_(feats.std(0, unbiased=False).clamp_min(1e-6))
    w = bootstrap_counts(len(train), cfg)
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


def _backbone_and_cache(pairs_or_store, clip, cfg: FitConfig, cache: EmbeddingCache | None):
    """A loaded CLIP and an embedding cache of the kind `cfg` wants (default: the store's, else memory)."""
    if isinstance(clip, (str, bytes)) or hasattr(clip, "__fspath__"):
        from rlcm.clip import load_clip

        clip = load_clip(clip)
    if cache is None:
        cache = EmbeddingCache(clip, getattr(pairs_or_store, "data_dir", None), cfg.image_features)
    if cache.image_features != cfg.image_features:
        raise ValueError(f"the cache holds {cache.image_features!r} image features, the fit wants {cfg.image_features!r}")
    return clip, cache


def fit_data(data: PairData, cfg: FitConfig, eval_data: PairData | None = None) -> tuple[EnsembleHead, dict]:
    """Split, train and score a head on collected pairs: the one fitting path of `fit` and `accuracy_curve`.

    Held-out metrics come from the test split, or from `eval_data` when given (then every label goes to
    train/validation). Raises ValueError when there are too few pairs.
    """
    if len(data) < cfg.min_pairs:
        raise ValueError(f"need at least {cfg.min_pairs} labelled (non-skip) pairs to fit, got {len(data)}")
    t0 = time.perf_counter()
    train, val, test = split(data, replace(cfg, test_fraction=0.0) if eval_data is not None else cfg)
    if cfg.hidden == 0:  # cross-validation picks the prior: no early-stopping split
        train, val = sorted(train + val), []
    if not train or (cfg.hidden and not val):
        raise ValueError(f"{len(set(data.keys))} distinct pairs are too few to split into train, validation and "
                         "test; label more distinct pairs")
    if cfg.hidden == 0:
        head, priors = train_linear_head(data, train, cfg)
        trained = {"priors": priors}
    else:
        head, epochs = train_head(data, train, val, cfg)
        trained = {"best_epochs": epochs}
    t_fit = time.perf_counter() - t0
    held = pair_metrics(head, eval_data if eval_data is not None else data.subset(test))
    metrics = {
        **{k: held[k] for k in ("accuracy", "accuracy_n", "accuracy_ci", "better_than_chance", "log_loss",
                                "ensemble_spread")},
        "n_test": held["n"], "n_test_ties": held["n_ties"],
        "n_pairs": len(data), "n_train": len(train), "n_val": len(val),
        "n_raters": len(set(data.raters)), "n_samples": len(data.item_ids),
        "train_accuracy": pair_metrics(head, data.subset(train))["accuracy"],
        "val_accuracy": pair_metrics(head, data.subset(val))["accuracy"],
        **self_agreement(data), **trained, "fit_seconds": round(t_fit, 3),
    }
    if cfg.hidden == 0 and cfg.cv_accuracy and eval_data is None:
        cv = cross_validated(data, cfg)
        if cv["accuracy_n"] > metrics["accuracy_n"]:  # the headline is the estimate on more pairs
            metrics.update({f"test_{k}": metrics[k] for k in ("accuracy", "accuracy_n", "accuracy_ci")}, **cv,
                           accuracy_method=f"{cfg.cv_folds}-fold cross-validation by prompt over all pairs")
    metrics.setdefault("accuracy_method", "held-out test pairs")
    return head, metrics


def cross_validated(data: PairData, cfg: FitConfig) -> dict:
    """Accuracy over every decided pair, each predicted by linear heads fitted on the other prompts' pairs
    (`cfg.cv_folds` folds by prompt); the same summary as `pair_metrics` (interval, n, better_than_chance)."""
    prompts = [data.item_prompts[int(j)] if data.item_prompts else str(int(j)) for j in data.a]
    folds = folds_by_group(prompts, cfg.cv_folds, cfg.seed)
    hits = n = 0.0
    for f in np.unique(folds):
        train, test = [i for i in range(len(data)) if folds[i] != f], [i for i in range(len(data)) if folds[i] == f]
        if not train or not test:
            continue
        head, _ = train_linear_head(data, train, cfg)
        m = pair_metrics(head, data.subset(test))
        if m["accuracy_n"]:
            hits += m["accuracy"] * m["accuracy_n"]
            n += m["accuracy_n"]
    return accuracy_summary(hits, int(n))


def fit(pairs_or_store, clip, config: FitConfig | None = None, cache: EmbeddingCache | None = None
        ) -> tuple[RewardModel, dict]:
    """Fit a reward model on labelled pairs; returns it and its held-out metrics.

    `clip` is a loaded `rlcm.clip.Clip` or a path/name for `load_clip`. `cache` defaults to the store's
    `data_dir/embeddings` for a store, memory for a list of pairs. The metrics carry `accuracy` on the
    held-out pairs with `accuracy_n` (decided pairs; ties are left out, see reward_model.metrics), its 95%
    Wilson interval `accuracy_ci` and `better_than_chance` (the interval's low end above 0.5).
    """
    cfg = config or FitConfig()
    clip, cache = _backbone_and_cache(pairs_or_store, clip, cfg, cache)
    t0 = time.perf_counter()
    data = collect(pairs_or_store, cache)
    t_embed = time.perf_counter() - t0
    head, metrics = fit_data(data, cfg)
    metrics["embed_seconds"] = round(t_embed, 3)
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
    """Accuracy (with interval) and log-loss of a fitted model on every labelled pair given (make sure it did not
    train on them)."""
    if cache is None:
        cache = EmbeddingCache(model.clip, getattr(pairs_or_store, "data_dir", None), model.config.image_features)
    data = collect(pairs_or_store, cache)
    out = pair_metrics(model.head, PairData(data.img.to(model.device), data.txt.to(model.device), data.a, data.b,
                                            data.y, data.keys, data.raters, data.item_ids))
    return {**out, "n_raters": len(set(data.raters)), **self_agreement(data)}


CURVE_KEYS = ("accuracy", "accuracy_n", "accuracy_ci", "better_than_chance", "log_loss", "n_test", "n_test_ties",
              "fit_seconds")


def accuracy_curve(pairs_or_store, clip, sizes=(50, 100, 200, 300, 500), config: FitConfig | None = None,
                   eval_pairs=None, cache: EmbeddingCache | None = None) -> list[dict]:
    """Held-out metrics after fitting on the first n labels (nested, seeded order) for each n in `sizes`.

    Each point is `fit`'s own path (`fit_data`). With `eval_pairs` (pairs or a store never used for fitting)
    every size is scored on that same set; otherwise each fit reports its own held-out split.
    """
    cfg = config or FitConfig()
    clip, cache = _backbone_and_cache(pairs_or_store, clip, cfg, cache)
    data = collect(pairs_or_store, cache)
    order = np.random.default_rng(cfg.seed).permutation(len(data)).tolist()
    eval_data = collect(eval_pairs, cache) if eval_pairs is not None else None
    out = []
    for n in sizes:
        if n > len(data):
            out.append({"n_labels": n, "accuracy": None, "note": f"only {len(data)} labels"})
            continue
        try:
            _, m = fit_data(data.subset(order[:n]), cfg, eval_data)
        except ValueError as e:
            out.append({"n_labels": n, "accuracy": None, "note": str(e)})
            continue
        out.append({"n_labels": n, **{k: m[k] for k in CURVE_KEYS}})
    return out
