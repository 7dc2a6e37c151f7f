"""Automatic rejection of a finished round before anyone votes: broken numbers, broken images, lost prompts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FLAT_STD = 2.0  # an image whose pixels vary less than this (of 255) shows nothing
SAME_MAX_DIFF = 1.0  # images within this (of 255, per pixel) of their start version show no change
MAX_FIDELITY_DROP = 10.0  # points of toy prompt fidelity a round may lose before it counts as a collapse
# a round hands over its latest evaluated epoch within this many points of the base model's fidelity (the same
# held-out prompts and seeds), and stops once fidelity fell MAX_FIDELITY_DROP below its start
KEEP_FIDELITY_DROP = 2.0


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
