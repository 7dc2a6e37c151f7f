"""Exact attribute checker for toy-world images: which of a prompt's requested attributes are present.

This is the toy world's prompt-fidelity metric (GenEval's role for real models):
- background colour: nearest named colour to the mean of the 2-pixel border ring
  (objects never touch it, and background styles modulate around the named colour);
- object colour: enough near-pure pixels of that colour away from the background colour;
- shape: the object's largest connected region against templates of every shape drawn in its
  bounding box (best IoU wins);
- size: the side of that bounding box against the small/large threshold.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import COLORS, SHAPES, SIZE, SIZE_THRESHOLD, Request, parse, shape_mask

PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (C, 3)
NAMES = list(COLORS)
PURE_DIST = 70.0  # a pixel counts as a colour only this close to it (excludes blended edges)
BG_DIST = 60.0  # ... and only this far from the background colour
MIN_PIXELS = 12  # fewer pure pixels than this: the colour is absent


@dataclass
class Check:
    """Per-attribute verdicts (only for attributes the prompt requests)."""

    results: dict[str, bool]
    found: dict[str, object]  # what the checker saw, for display and debugging

    @property
    def score(self) -> float:
        return float(np.mean(list(self.results.values()))) if self.results else 1.0

    @property
    def all_correct(self) -> bool:
        return all(self.results.values())


def _as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.BILINEAR)
        return np.asarray(image, dtype=np.float32)
    arr = np.asarray(image, dtype=np.float32)
    if arr.shape != (SIZE, SIZE, 3):
        raise ValueError(f"expected a {SIZE}x{SIZE} RGB image, got array of shape {arr.shape}")
    return arr


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected region of a boolean mask (BFS; images are only 64x64)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, q = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    q.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def classify_shape(region: np.ndarray) -> tuple[str, int]:
    """Best-matching shape for a boolean region, and its bounding-box side."""
    ys, xs = np.nonzero(region)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        t = shape_mask(shape, x0, y0, x1, y1) >= 0.5
        iou = (t & region).sum() / max((t | region).sum(), 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, int(max(x1 - x0, y1 - y0))


def check(image, prompt: str | Request) -> Check:
    """Which attributes requested by `prompt` the image shows."""
    req = parse(prompt) if isinstance(prompt, str) else prompt
    arr = _as_array(image)
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    bg_mean = border.mean(0)
    bg_name = NAMES[int(np.linalg.norm(PALETTE - bg_mean, axis=1).argmin())]

    dists = np.linalg.norm(arr[:, :, None, :] - PALETTE[None, None], axis=-1)  # (H, W, C)
    cls = dists.argmin(-1)
    pure = (dists.min(-1) < PURE_DIST) & (np.linalg.norm(arr - bg_mean, axis=-1) > BG_DIST)
    pure &= cls != NAMES.index(bg_name)

    results: dict[str, bool] = {}
    found: dict[str, object] = {"bg_color": bg_name}
    if req.bg_color:
        results["bg_color"] = bg_name == req.bg_color

    claimed: set[int] = {NAMES.index(c) for o in req.objects if (c := o.get("color"))}
    for i, o in enumerate(req.objects):
        if o.get("color"):
            ci = NAMES.index(o["color"])
        else:  # colour left out: the most frequent unclaimed object colour
            counts = np.bincount(cls[pure], minlength=len(NAMES))
            for c in claimed:
                counts[c] = 0
            ci = int(counts.argmax())
            claimed.add(ci)
        present = int((pure & (cls == ci)).sum()) >= MIN_PIXELS
        if o.get("color"):
            results[f"object{i}_color"] = present
        shape = side = None
        if present:
            c = PALETTE[ci]
            d_obj = np.linalg.norm(arr - c, axis=-1)
            closer = (d_obj < np.linalg.norm(arr - bg_mean, axis=-1)) & (d_obj < 100)
            for other in claimed - {ci}:  # keep neighbouring objects of similar colour apart
                closer &= d_obj < np.linalg.norm(arr - PALETTE[other], axis=-1)
            region = _largest_component(closer)
            shape, side = classify_shape(region)
        found[f"object{i}"] = {"color": NAMES[ci] if present else None, "shape": shape, "side": side}
        if o.get("shape"):
            results[f"object{i}_shape"] = shape == o["shape"]
        if o.get("size"):
            results[f"object{i}_size"] = side is not None and (side >= SIZE_THRESHOLD) == (o["size"] == "large")
    return Check(results, found)


def fidelity(images, prompts) -> dict[str, float]:
    """Mean per-attribute accuracy over a batch, plus the overall mean and all-correct rate."""
    per: dict[str, list[bool]] = {}
    scores, alls = [], []
    for img, p in zip(images, prompts):
        ch = check(img, p)
        scores.append(ch.score)
        alls.append(ch.all_correct)
        for k, v in ch.results.items():
            key = k.split("_", 1)[1] if k.startswith("object") else k
            per.setdefault(key, []).append(v)
    out = {k: float(np.mean(v)) for k, v in per.items()}
    out["score"] = float(np.mean(scores)) if scores else 0.0
    out["all_correct"] = float(np.mean(alls)) if alls else 0.0
    return out
