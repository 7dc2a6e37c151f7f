"""Automatic rejection of a finished round before anyone votes: broken numbers, broken images, lost prompts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FLAT_STD = 2.0  # an image whose pixels vary less than this (of 255) shows nothing
SAME_MAX_DIFF = 1.0  # images within this (of 255, per pixel) of their start version show no change
MAX_FIDELITY_DROP = 10.0  # points of toy prompt fidelity a round may lose before it counts as a collapse
# a round hands over its latest saved epoch within this many points of the base model's fidelity (the same
# held-out prompts and seeds; studio.rounds.FidelityKeeper)
KEEP_FIDELITY_DROP = 2.0
# Before a vote, a finished round's toy prompt fidelity is measured again on new held-out prompts (x2 seeds, the
# same seeds for base and candidate): the keeper chose its epoch on the round's own 256 images, so that figure is
# biased up (32 of them until bd56448: table rounds measured +0.3 there and -8.7 points on 512 new images,
# RESULTS "Confirming fidelity").
# ... and it must be above -KEEP_FIDELITY_DROP by this many of its standard errors: a round that passed at -1.9 on
# 256 images (SE 1.0) measured -2.4 on 256 other ones (big_centred live loop, runs/table5), and every round that
# passes a noisy threshold is biased to have been measured lucky
CONFIRM_MARGIN_SE = 1.0
# The confirmation looks at the images of its first quarter of the prompts, then of its first half, then all,
# and renders more only while a look is within CONFIRM_EARLY_SE of its standard errors of the -KEEP_FIDELITY_DROP
# line: a round clearly inside (or clearly beyond) it is decided on a quarter or half of the images (the checks
# of round 1 took ~20 s of 2-core CPU for 256 images, about 10 labels people rated meanwhile). A round exactly on
# the line passes an early look 2.3% of the time (z >= 2), against 16% for the final rule (z >= 1)
CONFIRM_EARLY_SE = 2.0
CONFIRM_SEED = 1_000_003  # prompt draw of the confirmation set: not the rounds' (round id + 1) nor Compare's (7)
# Each round is confirmed on its own draw (prompts and image seeds; the base is scored on it too). One fixed set
# read 0.5-3.3 points high for every warm-shifted round of a live loop, and a chain of rounds that each pass the
# same set is selected for luck on it: warm_colours' round-4 passed at +0.6 and measured -2.7 on 512 further
# images (RESULTS, "Live loop (studio): rounds ahead of a trial, sign-test gate")
CONFIRM_SEED_STRIDE = 2048  # image seeds per draw: confirm_prompts x 2 at most


def reject_reason(history: list[dict], lora_dir: Path, result: dict) -> str | None:
    """Why a round must not go to a vote (non-finite loss, reward or weights; collapsed fidelity), or None."""
    from safetensors.torch import load_file

    for row in history:
        for k in ("loss", "reward_mean", "eval_reward_mean"):
            v = row.get(k)
            if isinstance(v, float) and not math.isfinite(v):
                return f"non-finite {k} at epoch {row.get('epoch')}"
    files = sorted(Path(lora_dir).glob("*.safetensors"))
    if not files:
        return "no LoRA weights were written"
    for f in files:
        bad = [k for k, t in load_file(f).items() if not bool(t.float().isfinite().all())]
        if bad:
            return f"non-finite LoRA weights in {len(bad)} tensors (e.g. {bad[0]})"
    before, after = result.get("fidelity_before"), result.get("fidelity_after")
    base = result.get("fidelity_base")
    if before is not None and after is not None:
        if 100 * (before - after) > MAX_FIDELITY_DROP:
            return f"prompt fidelity collapsed: {100 * before:.1f}% -> {100 * after:.1f}%"
        ref = base if base is not None else before
        if 100 * (ref - after) > KEEP_FIDELITY_DROP:
            return (f"no evaluated epoch kept prompt fidelity within {KEEP_FIDELITY_DROP:g} points of the "
                    f"{'base model' if base is not None else 'start'}'s: {100 * ref:.1f}% -> {100 * after:.1f}%")
    return None


def _load(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in sorted(folder.glob("*.png"))]


def images_reason(compare_dir: Path, version: str, start_version: str = "base") -> str | None:
    """Why the fixed Compare images of `version` are degenerate (flat, all alike, or unchanged), or None."""
    images = _load(compare_dir / version)
    if not images:
        return "no images were rendered"
    flat = sum(float(im.std()) < FLAT_STD for im in images)
    if flat > len(images) // 2:
        return f"{flat} of {len(images)} images are flat (pixel std < {FLAT_STD}/255)"
    if len(images) > 1:
        spread = float(np.mean([np.abs(im - images[0]).mean() for im in images[1:]]))
        if spread < FLAT_STD:
            return f"every prompt gives the same image (mean difference {spread:.2f}/255)"
    start = _load(compare_dir / start_version)
    if len(start) == len(images) and max(float(np.abs(a - b).max()) for a, b in zip(images, start)) <= SAME_MAX_DIFF:
        return f"no visible change from {start_version}"
    return None


def confirmation_set(n_prompts: int, draw: int = 0) -> tuple[list[str], list[int]]:
    """The held-out prompts (each with 2 seeds) on which a finished round is compared with the base; `draw`
    (the round id) picks the prompts and the image seeds, so each round is confirmed on images of its own."""
    from rlcm.prompts import get_prompts

    prompts = get_prompts("toy", "heldout", n_prompts, seed=CONFIRM_SEED + draw)[:n_prompts]
    prompts = [p for p in prompts for _ in (0, 1)]
    return prompts, [50_000 + CONFIRM_SEED_STRIDE * draw + i for i in range(len(prompts))]


def image_fidelity(images, prompts) -> np.ndarray:
    """(N,) toy prompt fidelity of each image: the share of its prompt's attributes the checker finds."""
    from rlcm.toy.checker import check

    return np.array([check(im, p).score for im, p in zip(images, prompts)], dtype=np.float64)


def fidelity_scores(sample_fn, prompts: list[str], seeds: list[int], chunk: int = 64) -> np.ndarray:
    """(N,) `image_fidelity` of `sample_fn(prompts, seeds) -> images`, called in chunks: a served generator's
    lock is free between them for the pair queue."""
    return np.concatenate([image_fidelity(sample_fn(prompts[i:i + chunk], seeds[i:i + chunk]), prompts[i:i + chunk])
                           for i in range(0, len(prompts), chunk)])


def fidelity_change(base: np.ndarray, candidate: np.ndarray, prompts: list[str]) -> dict:
    """Paired change in points (candidate - base, same prompts and seeds), its standard error and n. The error is
    clustered by prompt: a taste that costs a prompt its colour costs it on each of its seeds (the two seeds'
    changes correlated 0.32-0.47 for warm_colours' round 1, RESULTS "Fidelity confirmation: standard errors
    clustered by prompt"), so the images are not independent draws."""
    d = 100 * (np.asarray(candidate) - np.asarray(base))
    _, group = np.unique(np.asarray(prompts, dtype=str), return_inverse=True)
    resid = np.bincount(group, weights=d - d.mean())  # each prompt's summed deviation from the mean change
    g = len(resid)  # the cluster-robust (CR1) variance of the mean; with 2 seeds a prompt: var(prompt means) / g
    se = math.sqrt(g / (g - 1) * float(resid @ resid)) / len(d) if g > 1 else math.inf  # one prompt: no error known
    return {"change_points": float(d.mean()), "se_points": se, "n": len(d)}


def confirmation_looks(n_prompts: int) -> list[int]:
    """Image counts at which the confirmation of `n_prompts` prompts (2 seeds each, `confirmation_set`) looks:
    the images of its first quarter of the prompts, of its first half, then all."""
    return sorted({2 * (n_prompts // k) for k in (4, 2, 1)} - {0})


def iter_confirmation(n_prompts: int, prompts: list[str], base_upto, candidate_upto):
    """The confirmation's looks in order (`confirmation_looks`), each the `fidelity_change` on the first n images,
    up to the first that settles it (`confirm_settled`) or the last: `base_upto(n)` and `candidate_upto(n)` give
    the per-image fidelity of the first n images, so a caller renders only what the looks reach (a look's
    images are rendered when the caller asks for it: the studio opens a trial between two looks)."""
    for n in confirmation_looks(n_prompts):
        change = fidelity_change(base_upto(n), candidate_upto(n), prompts[:n])
        yield change
        if confirm_settled(change):
            return


def confirmation_changes(n_prompts: int, prompts: list[str], base_upto, candidate_upto) -> list[dict]:
    """Every look of `iter_confirmation`, rendered at once."""
    return list(iter_confirmation(n_prompts, prompts, base_upto, candidate_upto))


def confirm_settled(change: dict) -> bool:
    """An early look settles the confirmation: its change is CONFIRM_EARLY_SE standard errors or more from the
    -KEEP_FIDELITY_DROP line, either way (`confirm_reason` then says which)."""
    return abs(change["change_points"] + KEEP_FIDELITY_DROP) >= CONFIRM_EARLY_SE * change["se_points"] > 0


def confirm_reason(change: dict) -> str | None:
    """Why a candidate's confirmed fidelity change is too large a loss to put it to a vote, or None: it must be
    above -KEEP_FIDELITY_DROP points by CONFIRM_MARGIN_SE standard errors (about 84% sure it is within them)."""
    limit = -KEEP_FIDELITY_DROP + CONFIRM_MARGIN_SE * change["se_points"]
    if change["change_points"] < limit:
        return (f"prompt fidelity on {change['n']} new images is {change['change_points']:+.1f} "
                f"± {change['se_points']:.1f} points against the base model's (limit -{KEEP_FIDELITY_DROP:g} "
                f"+ {CONFIRM_MARGIN_SE:g} standard error = {limit:+.1f})")
    return None
