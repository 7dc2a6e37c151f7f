"""How far can the base model's own variation carry a taste? A best-of-N ceiling for the live loop's win rate.

    python bench/taste_ceiling.py warm_colours big_centred noisy_warm_colours noisy_big_centred
    python bench/taste_ceiling.py warm_colours --n 32 --prompts 32

The live loop's measurement (bench/live_loop.py: held-out prompts x 2 seeds, the served image against the base
image of the same prompt and seed, ties half), with the served model replaced by an idealised policy: for each
prompt it draws N more base samples, keeps those whose toy prompt fidelity is at least the base image's, and
shows the one among them and the base image that the rater's noiseless taste ranks first (most pairwise wins).
RL on per-prompt advantages reinforces differences between samples of one prompt, so a round that only
reweights the base's own samples stays at or below this (best of 17 is a large shift: about 1.9 nats of KL per
image). A round can exceed it only by drawing images the base hardly ever draws (a tint of every colour, say).

Reported per rater: the win rate under the rater itself (noisy raters flip a fifth of their answers, so they
score even a perfect improvement at 0.8 at most) and under its noiseless taste, the share of ties, and the
fidelity change. Prints a table; writes a RESULTS.md section.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from feedback.raters import load_rater  # noqa: E402
from live_loop import heldout_set, oracle_wins  # noqa: E402 (beside this script)
from results import results_path, update_section  # noqa: E402
from studio import checks, gate  # noqa: E402
from studio.serving import BASE, ServedGenerator  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402

SIDE = {"a": 1, "b": -1, "tie": 0}


def best_of(taste, images: list, prompt: str) -> int:
    """Index of the image with the most pairwise wins under `taste` (ties: the earlier)."""
    score = [0] * len(images)
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            s = SIDE[taste(images[i], images[j], prompt)]
            score[i] += s
            score[j] -= s
    return int(np.argmax(score))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raters", nargs="+", help="raters (a noisy one's choice is made by its noiseless taste)")
    ap.add_argument("--n", type=int, default=16, help="base samples per prompt to choose from")
    ap.add_argument("--prompts", type=int, default=64, help="held-out prompts (x 2 seeds), as the live loop")
    ap.add_argument("--seed", type=int, default=0, help="the live loop's --seed (its held-out prompts)")
    ap.add_argument("--quick", action="store_true", help="8 prompts, N = 4; throw-away RESULTS.md")
    args = ap.parse_args()
    if args.quick:
        args.n, args.prompts = 4, 8
    gen = ServedGenerator(StudioSettings(data_dir=Path(tempfile.mkdtemp(prefix="ceiling-")), admin_password="x"))
    prompts, seeds = heldout_set(args.prompts, args.seed)  # the live loop's: these are its base images
    base = gen.generate(prompts, seeds, version=BASE)[0]
    pool_prompts = [p for p in prompts for _ in range(args.n)]
    pool_seeds = [50_000 + i for i in range(len(pool_prompts))]
    pool = gen.generate(pool_prompts, pool_seeds, version=BASE)[0]
    pool = [pool[i * args.n:(i + 1) * args.n] for i in range(len(prompts))]
    fid_base = checks.image_fidelity(base, prompts)
    fid_pool = [checks.image_fidelity(imgs, [p] * len(imgs)) for imgs, p in zip(pool, prompts)]
    rows = []
    for name in args.raters:
        oracle = load_rater(name)
        taste = getattr(oracle, "taste", oracle)  # a noisy rater's noiseless taste
        chosen = []
        for i, p in enumerate(prompts):
            ok = [base[i]] + [im for im, f in zip(pool[i], fid_pool[i]) if f >= fid_base[i]]  # the base image too
            chosen.append(ok[best_of(taste, ok, p)])
        wins = oracle_wins(oracle, base, chosen, prompts)
        clean = oracle_wins(taste, base, chosen, prompts)
        rec = gate.Record.from_scores(wins)
        lo, hi = rec.interval(0.9)
        change = checks.fidelity_change(fid_base, checks.image_fidelity(chosen, prompts), prompts)
        rows.append(f"| {name} | {np.mean(wins):.3f} ({lo:.2f}–{hi:.2f}) | {np.mean(clean):.3f} | "
                    f"{np.mean([w == 0.5 for w in clean]):.0%} | "
                    f"{change['change_points']:+.1f} ± {change['se_points']:.1f} |")
        print(rows[-1], flush=True)
    intro = (f"Best of the base image and {args.n} more base samples per prompt (those with fidelity at least the "
             "base image's), chosen by the rater's "
             f"noiseless taste, against the base image: the live loop's held-out set ({len(prompts)} images = "
             f"{args.prompts} prompts x 2 seeds, ties half). What a round that only reweights the base's own "
             "samples could reach at most; noisy raters score a perfect improvement at 0.8 at most.\n\n"
             "| rater | win rate under the rater (90% interval) | under its noiseless taste | ties (noiseless) | "
             "fidelity change (points) |\n|---|---|---|---|---|\n")
    print(update_section(f"Taste ceiling: best of {args.n} base samples", intro + "\n".join(rows) + "\n",
                         results_path(args.quick)))


if __name__ == "__main__":
    main()
