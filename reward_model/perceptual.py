"""Generic perceptual statistics of an image — colour, layout, subject, texture — that a caption-trained encoder drops.

Within one prompt people judge shade, size, position, texture and composition; CLIP's contrastive training
keeps what captions name and learns to ignore the rest (`bench/rm_feature_probe.py`). These are the classic
hand-made photo-quality cues (colour moments and hue histograms; subject/background separation, subject
position and spread; background simplicity and edge energy — Datta et al. 2006, Ke et al. 2006, Luo & Tang
2008), computed on any RGB image: it is area-resized to SIZE x SIZE first, so the statistics do not depend
on resolution. The reward head standardises every column by its training mean and std.

The subject is found without a segmenter: the background colour is the median of the outer ring, and a
pixel's saliency is its CIELAB distance (ΔE) from it.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

SIZE = 64  # working resolution (area resize)
RING = 3  # outer ring width in pixels at SIZE: where the background shows
THUMB = 4  # THUMB x THUMB low-resolution layout of the Lab image
HUE_BINS = 8  # chroma-weighted hue histogram
L_BINS = 4  # lightness histogram
FG_THRESHOLDS = (10.0, 25.0, 50.0)  # ΔE from the background colour above which a pixel counts as subject
VERSION = 1  # bump when the statistics change: cached features of another version are not reused

NAMES: list[str] = (
    [f"lab_mean_{c}" for c in "Lab"] + [f"lab_std_{c}" for c in "Lab"]
    + ["opponent_rg_mean", "opponent_yb_mean", "opponent_rg_std", "opponent_yb_std", "chroma_mean", "colourfulness"]
    + [f"hue_hist_{i}" for i in range(HUE_BINS)] + ["achromatic_fraction"] + [f"l_hist_{i}" for i in range(L_BINS)]
    + [f"thumb_{c}_{i}_{j}" for i in range(THUMB) for j in range(THUMB) for c in "Lab"]
    + [f"background_{c}" for c in "Lab"] + [f"subject_{c}" for c in "Lab"]
    + ["saliency_mean"] + [f"subject_fraction_{t:g}" for t in FG_THRESHOLDS]
    + ["subject_x", "subject_y", "subject_offcentre", "subject_spread", "subject_central_fraction",
       "centre_border_contrast"]
    + ["grad_energy", "grad_energy_ring", "grad_energy_centre", "laplacian_energy",
       "local_std_ring", "local_std_centre", "ring_lab_std"]
)
DIM = len(NAMES)


def _group(name: str) -> str:
    if name.startswith("thumb"):
        return "layout"
    if name.startswith(("background", "subject", "saliency", "centre_border")):
        return "subject"
    if name.startswith(("grad", "laplacian", "local_std", "ring")):
        return "texture"
    return "colour"


# what each block of columns describes, in column order (the blocks are contiguous): colour, layout, subject, texture
GROUPS: dict[str, slice] = {}
for _i, _name in enumerate(NAMES):
    _g = _group(_name)
    GROUPS[_g] = slice(GROUPS[_g].start if _g in GROUPS else _i, _i + 1)
assert sum(s.stop - s.start for s in GROUPS.values()) == DIM  # contiguous blocks


# narrower column sets than the groups, one cue each that a person may judge by: with a handful of decided pairs
# a prior on 6-8 columns finds the direction that one on a whole block such as colour (25 columns) cannot (RESULTS,
# "Reward model from the first labels: cue priors"). They overlap the groups and are priors only.
CUES: dict[str, tuple[str, ...]] = {
    "shade": ("lab_mean_L", "lab_mean_a", "lab_mean_b", "opponent_rg_mean", "opponent_yb_mean", "chroma_mean"),
    "subject_place": ("saliency_mean", *(f"subject_fraction_{t:g}" for t in FG_THRESHOLDS), "subject_offcentre",
                      "subject_spread", "subject_central_fraction", "centre_border_contrast"),
    "background": ("background_L", "background_a", "background_b", "grad_energy_ring", "local_std_ring",
                   "ring_lab_std"),
}
assert all(n in NAMES for cue in CUES.values() for n in cue)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) sRGB in [0, 1] -> CIELAB (D65), L in [0, 100]."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=np.float32)
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _ring_mask(size: int, width: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[:width], m[-width:], m[:, :width], m[:, -width:] = True, True, True, True
    return m


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of (N, H, W) over the pixels where the (H, W) mask is true -> (N,)."""
    return x[:, mask].mean(1)


def _local_std(x: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H-2, W-2) std over each 3x3 window."""
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))
    return win.std(axis=(-2, -1))


def perceptual_features(images: list[Image.Image]) -> torch.Tensor:
    """(N, DIM) float32 statistics of PIL images, in the order of NAMES."""
    if not images:
        return torch.zeros(0, DIM)
    rgb = np.stack([np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BOX), dtype=np.float32) / 255.0
                    for im in images])  # (N, S, S, 3)
    n, s = len(images), SIZE
    lab = _lab(rgb)  # (N, S, S, 3)
    flat = lab.reshape(n, -1, 3)
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    chroma = np.hypot(a, b)

    # 1. colour moments: Lab, and the opponent channels rg = R - G, yb = (R + G)/2 - B with the colourfulness
    # of Hasler & Süsstrunk 2003 built from them (these are linear in RGB, where Lab's are not)
    rg = (rgb[..., 0] - rgb[..., 1]).reshape(n, -1)
    yb = (0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]).reshape(n, -1)
    opp = np.stack([rg.mean(1), yb.mean(1), rg.std(1), yb.std(1)], 1)
    colourful = np.hypot(opp[:, 2], opp[:, 3]) + 0.3 * np.hypot(opp[:, 0], opp[:, 1])
    moments = [flat.mean(1), flat.std(1), opp, chroma.reshape(n, -1).mean(1)[:, None], colourful[:, None]]

    # 2. histograms: hue weighted by chroma (pixels below chroma 10 count as achromatic), lightness
    hue = (np.arctan2(b, a) % (2 * np.pi)).reshape(n, -1)
    w = np.where(chroma.reshape(n, -1) > 10.0, 1.0, 0.0)
    hue_bin = np.minimum((hue / (2 * np.pi) * HUE_BINS).astype(int), HUE_BINS - 1)
    hue_hist = np.stack([(w * (hue_bin == k)).mean(1) for k in range(HUE_BINS)], 1)
    l_bin = np.minimum((L.reshape(n, -1) / 100.0 * L_BINS).astype(int).clip(0), L_BINS - 1)
    l_hist = np.stack([(l_bin == k).mean(1) for k in range(L_BINS)], 1)

    # 3. layout: a THUMB x THUMB area-average of the Lab image
    c = s // THUMB
    thumb = lab.reshape(n, THUMB, c, THUMB, c, 3).mean((2, 4)).reshape(n, -1)

    # 4. subject: ΔE from the ring's median colour; its mass, colour, centroid, spread and centrality
    ring = _ring_mask(s, RING)
    centre = np.zeros((s, s), dtype=bool)
    centre[s // 4: s - s // 4, s // 4: s - s // 4] = True
    bg = np.median(lab[:, ring], axis=1)  # (N, 3)
    sal = np.linalg.norm(lab - bg[:, None, None], axis=-1)  # (N, S, S)
    fg = [(sal > t).reshape(n, -1).mean(1) for t in FG_THRESHOLDS]
    wsal = np.maximum(sal.reshape(n, -1) - FG_THRESHOLDS[0], 0.0) + 1e-6  # above the noise floor: the subject
    wsum = wsal.sum(1)
    subject_lab = (flat * wsal[..., None]).sum(1) / wsum[:, None]
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1) - 0.5  # centred coordinates in [-0.5, 0.5]
    cx, cy = (wsal * xs.ravel()).sum(1) / wsum, (wsal * ys.ravel()).sum(1) / wsum
    spread = np.sqrt((wsal * ((xs.ravel() - cx[:, None]) ** 2 + (ys.ravel() - cy[:, None]) ** 2)).sum(1) / wsum)
    central = wsal[:, centre.ravel()].sum(1) / wsum  # share of the subject's mass in the central half
    contrast = np.linalg.norm(lab[:, centre].mean(1) - lab[:, ring].mean(1), axis=-1)
    subject = [bg, subject_lab, sal.reshape(n, -1).mean(1)[:, None], np.stack(fg, 1),
               np.stack([cx, cy, np.hypot(cx, cy), spread, central, contrast], 1)]

    # 5. texture and edges on lightness: gradient energy overall / in the ring / in the centre, Laplacian
    # energy, 3x3 local std in the ring and the centre, colour spread of the ring (background clutter)
    gy, gx = np.gradient(L, axis=(1, 2))
    grad = np.hypot(gx, gy)
    lap = np.abs(L[:, 1:-1, 1:-1] * 4 - L[:, :-2, 1:-1] - L[:, 2:, 1:-1] - L[:, 1:-1, :-2] - L[:, 1:-1, 2:])
    lstd = _local_std(L)
    texture = np.stack([grad.reshape(n, -1).mean(1), _masked_mean(grad, ring), _masked_mean(grad, centre),
                        lap.reshape(n, -1).mean(1), _masked_mean(lstd, ring[1:-1, 1:-1]),
                        _masked_mean(lstd, centre[1:-1, 1:-1]), lab[:, ring].std(1).mean(1)], 1)

    out = np.concatenate(moments + [hue_hist, (1 - w).mean(1)[:, None], l_hist, thumb] + subject + [texture], 1)
    return torch.from_numpy(out.astype(np.float32))
