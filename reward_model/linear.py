"""Linear Bradley–Terry heads for few labels: candidate priors scored on unseen prompts and averaged by that evidence.

With about 100 pairs (a quarter of them decided, the rest ties) most columns of a rich feature vector are
noise, and which ones matter depends on the taste: a shade lives in a few colour statistics, a plain
background in texture, a big centred subject in the subject statistics. A prior says which columns may
carry weight and how much: here a group of columns (one block such as "colour", or all of them, or all plus
the image x prompt columns), a column scale (which decides how far a unit of weight goes in each column)
and an L2 strength. Each candidate prior is scored by the log-likelihood of held-out pairs from prompts it
did not train on (K folds by prompt: the studio rewards new prompts too), and the fitted rewards are averaged
with weights proportional to exp(that log-likelihood) ("pseudo-BMA", Yao et al. 2018, Bayesian Analysis
13(3)). Each fit is convex (L-BFGS on the mean BT loss plus l2 * |w|^2).

A prompt's own features never get weight: they cancel in r_a - r_b for two images of one prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SCALES = ("items", "geo", "pairs")  # see column_scale


@dataclass(frozen=True)
class Prior:
    columns: tuple[str, ...]  # names of the column groups that may carry weight
    scale: str  # one of SCALES
    l2: float  # penalty on the squared weights of the scaled columns


def column_scale(feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """(F,) scale of each column, so that one unit of weight means the same for every column under `kind`:

    "items": its std over the images in the pairs; "pairs": the std of one image's value around its pair
    partner (std of the difference / sqrt 2: within-prompt variation for same-prompt pairs); "geo": their
    geometric mean. Columns that never vary within a pair keep their item scale.
    """
    items = feats[torch.unique(torch.cat([a, b]))].std(0, unbiased=False).clamp_min(1e-6)
    if kind == "items":
        return items
    within = (feats[a] - feats[b]).std(0, unbiased=False) / math.sqrt(2)
    scale = {"pairs": within, "geo": (within * items).sqrt()}[kind]
    return torch.where(within > 1e-3 * items, scale, items)


def fit_bt(d: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, l2: torch.Tensor | float,
           max_iter: int = 50) -> torch.Tensor:
    """(K, F) weights of K independent linear BT models on (P, F) scaled differences, labels (P,) in {0, 1/2, 1},
    per-model pair weights (K, P) and L2 strengths (K,) or one float: each minimises its weighted mean BT loss
    + l2 * |w|^2 (convex). One L-BFGS run over the sum: the models share no parameters.

    SciPy's L-BFGS-B on the analytic gradient, in float64: these problems are tiny (tens of pairs and columns),
    where torch's optimiser spent its time in per-call overhead (a 40-label fit: 2.2 s instead of 4.2 s). The
    gradient is computed with torch, not numpy: a studio round refits in its own low-priority thread, and numpy's
    OpenBLAS pool, started by another thread, spun on both cores while that thread waited (one refit ran for over
    2 minutes)."""
    from scipy.optimize import minimize

    k, f = weights.shape[0], d.shape[1]
    x, t = d.detach().double(), y.detach().double()
    share = weights.detach().double()
    share = share / share.sum(1, keepdim=True).clamp_min(1e-9)  # (K, P): a weighted mean per model
    lam = torch.as_tensor(l2, dtype=torch.float64).expand(k)[:, None]  # (K, 1)

    def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        w = torch.from_numpy(flat).view(k, f)
        z = w @ x.T  # (K, P) logits of "a beats b"
        nll = F.softplus(z) - t * z  # binary cross-entropy with logits, soft labels (ties 1/2)
        grad = (share * (torch.sigmoid(z) - t)) @ x + 2.0 * lam * w
        return float((share * nll).sum() + (lam * w * w).sum()), grad.numpy().ravel()

    with torch.no_grad():
        res = minimize(loss_and_grad, np.zeros(k * f), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": 1e-6})
    return torch.from_numpy(res.x.reshape(k, f)).to(d.dtype)


def _nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.binary_cross_entropy_with_logits(logits, y, reduction="sum"))


def folds_by_group(groups: list[str], n_folds: int, seed: int) -> np.ndarray:
    """(P,) fold of each pair: whole groups (prompts) per fold, seeded; by pair when there is only one group."""
    uniq = list(dict.fromkeys(groups))
    if len(uniq) < 2:
        return np.random.default_rng(seed).permutation(len(groups)) % n_folds
    n_folds = min(n_folds, len(uniq))
    fold_of = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq)) % n_folds))
    return np.array([fold_of[g] for g in groups])


def train_linear(feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, groups: list[str],
                 columns: dict[str, torch.Tensor], priors: list[Prior], pair_weights: torch.Tensor,
                 n_folds: int = 5, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """Evidence-weighted average of linear BT heads over `priors`.

    feats (U, F) head input per item; a, b, y (P,) training pairs; groups (P,) prompt of each pair (CV folds);
    columns: (F,) bool mask of each named column group; pair_weights (K, P) per-head bootstrap counts.
    Returns (K, F) weights on raw feature differences (r_a - r_b = w . (feats[a] - feats[b])) and, per prior,
    its cross-validated log-loss per pair and averaging weight.
    """
    folds = torch.from_numpy(folds_by_group(groups, n_folds, seed))
    fold_ids = folds.unique()
    k = pair_weights.shape[0]
    # per (column set, scale): one L-BFGS run fits every L2 strength on every CV fold and on the K bootstrap
    # resamples at once. The column scale is taken from all training pairs: it uses no labels.
    keep = (fold_ids[:, None] != folds[None, :]).float()  # (folds, P) training part of each fold
    rows = torch.cat([keep, pair_weights])  # (folds + K, P)
    out = torch.zeros(k, feats.shape[1])
    fits, table = [], []
    for cols_key in dict.fromkeys((p.columns, p.scale) for p in priors):
        names, scale_kind = cols_key
        cols = torch.stack([columns[c] for c in names]).any(0)
        l2s = [p.l2 for p in priors if (p.columns, p.scale) == cols_key]
        x = feats[:, cols]
        s = column_scale(x, a, b, scale_kind)
        d = (x[a] - x[b]) / s  # (P, C)
        w = fit_bt(d, y, rows.repeat(len(l2s), 1), torch.tensor(l2s).repeat_interleave(len(rows)))
        for j, l2 in enumerate(l2s):
            wj = w[j * len(rows):(j + 1) * len(rows)]  # (folds + K, C)
            logits = (wj[:len(fold_ids)] @ d.T)  # (folds, P)
            nll = sum(_nll(logits[f][folds == fid], y[folds == fid]) for f, fid in enumerate(fold_ids))
            table.append({"columns": "+".join(names), "scale": scale_kind, "l2": l2, "cv_log_loss": nll / len(y)})
            fits.append((cols, wj[len(fold_ids):] / s))
    evidence = torch.tensor([-t["cv_log_loss"] * len(y) for t in table], dtype=torch.float64)
    weight = torch.softmax(evidence, 0).tolist()  # pseudo-BMA: exp(CV log-likelihood), normalised
    for (cols, w), t, pi in zip(fits, table, weight):
        t["weight"], t["cv_log_loss"] = round(pi, 4), round(t["cv_log_loss"], 4)
        out[:, cols] += pi * w
    return out, table
