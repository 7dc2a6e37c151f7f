"""Why the reward model stalls: can CLIP features tell apart two samples of the SAME prompt along a rater's axis?

    python bench/rm_feature_probe.py            # ~1 min on the CPU; writes a section of bench/RESULTS.md

Toy-LCM samples (36 training prompts x 8 seeds, 4 steps); for each simulated rater's underlying score (warmth,
plainness, centred size) a ridge regression from features to the score is fitted on 24 prompts and judged on
the other 12 by within-prompt pairwise ordering, over all pairs and over the pairs whose score difference is
above the median (the clearer ones). Features: the CLIP image embedding alone, pooled (mean and max)
activations of the image tower's last two stages, and the generic perceptual statistics the reward model
appends to the embedding by default (reward_model/perceptual.py), alone and with the embedding.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from feedback.raters import centred_size, plainness, warmth  # noqa: E402
from reward_model.perceptual import DIM, perceptual_features  # noqa: E402
from rlcm.clip import load_clip  # noqa: E402
from rlcm.pipelines import load_pipeline  # noqa: E402
from rlcm.toy import world  # noqa: E402

SCORES = {"warmth (warm_colours)": warmth, "plainness (plain_background)": plainness,
          "centred size (big_centred)": centred_size}
SEEDS, TRAIN_PROMPTS, TEST_PROMPTS = 8, 24, 12


def within_prompt_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, ridge: float) -> tuple[float, float, float]:
    """Ridge fit on `train` rows; ordering accuracy of same-prompt test pairs: all, above-median |dy|, median |dy|."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xs = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.linalg.solve(xs[train].T @ xs[train] + ridge * np.eye(xs.shape[1]), xs[train].T @ y[train])
    pred = xs @ w
    diffs, hits = [], []
    for k in range(TRAIN_PROMPTS, TRAIN_PROMPTS + TEST_PROMPTS):
        for a, b in itertools.combinations(range(SEEDS * k, SEEDS * (k + 1)), 2):
            diffs.append(abs(y[a] - y[b]))
            hits.append((y[a] > y[b]) == (pred[a] > pred[b]))
    d, h = np.array(diffs), np.array(hits)
    med = float(np.median(d))
    return float(h.mean()), float(h[d > med].mean()), med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/toy-lcm")
    ap.add_argument("--clip", default="data/models/toy-clip")
    args = ap.parse_args()
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    prompts = world.prompts("train", TRAIN_PROMPTS + TEST_PROMPTS, seed=11)
    images = []
    for p in prompts:
        gens = [torch.Generator().manual_seed(s) for s in range(SEEDS)]
        with torch.no_grad():
            images += pipe([p] * SEEDS, num_inference_steps=4, guidance_scale=8.0, generator=gens).images
    clip = load_clip(args.clip)
    feats = {"CLIP image embedding alone": clip.embed_images(images).numpy()}
    stages = [(n, m) for n, m in (("layer3", getattr(clip.model.visual, "layer3", None)),
                                  ("layer4", getattr(clip.model.visual, "layer4", None))) if m is not None]
    acts: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: acts.__setitem__(n, o)) for n, m in stages]
    with torch.no_grad():
        clip.model.visual(torch.stack([clip.preprocess(im) for im in images]))
    for h in hooks:
        h.remove()
    for n, a in acts.items():
        feats[f"image tower {n}, pooled mean+max ({2 * a.shape[1]}-d)"] = torch.cat(
            [a.mean((2, 3)), a.amax((2, 3))], 1).numpy()
    perceptual = perceptual_features(images).numpy()
    feats[f"perceptual statistics ({DIM}-d)"] = perceptual
    feats[f"CLIP embedding + perceptual statistics ({perceptual.shape[1] + clip.embed_dim}-d)"] = np.c_[
        feats["CLIP image embedding alone"], perceptual]
    train = np.arange(len(images)) < TRAIN_PROMPTS * SEEDS
    lines = ["| features | score | same-prompt pairs ordered right | ... with above-median difference | "
             "median difference |", "|---|---|---|---|---|"]
    for fname, x in feats.items():
        for sname, fn in SCORES.items():
            y = np.array([fn(im) for im in images])
            acc, acc_clear, med = within_prompt_accuracy(x, y, train, ridge=1e-2 if x.shape[1] < 100 else 10.0)
            lines.append(f"| {fname} | {sname} | {acc:.3f} | {acc_clear:.3f} | {med:.4f} |")
            print(lines[-1], flush=True)
    md = "\n".join([f"Toy-LCM samples: {TRAIN_PROMPTS} + {TEST_PROMPTS} training prompts x {SEEDS} seeds (4 steps); "
                    f"backbone {args.clip}; ridge regression fitted on the first {TRAIN_PROMPTS} prompts.", ""] + lines)
    from results import update_section

    print(f"wrote {update_section('Reward model: what CLIP features see within a prompt', md)}")


if __name__ == "__main__":
    main()
