"""The reward model from the first labels: two ways of choosing a pair before any reward model exists, and the
fit with and without the cue priors.

    python bench/cold_pairs.py big_centred --streams 6
    python bench/cold_pairs.py warm_colours --streams 6 --rules distinct --fits nocues,default --at 10,20,40

Before its first fit the studio's queue has nothing to ask a reward model, and most random pairs of two seeds are
ties to a rater (the images differ in nothing it judges). Each stream draws training prompts with 4 base seeds
each (as many as the largest --at); the same draws are labelled by the rater under each rule: "random" (the first
two seeds, the queue before fd13197) and "distinct" (`studio.serving.most_distinct_pair`, the queue now). At each
--at the studio's reward model is fitted under each --fits config ("default": FitConfig(); "nocues": without the
cue priors of reward_model.perceptual.CUES) and measured on held-out prompts (60 prompts x the 6 pairs of 4 seeds,
decided pairs only): pairwise accuracy, and the rater's win rate (ties half) of the model's best of 4 against the
first seed. Prints per-stream rows, means over streams and a final JSON line.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import reward_model  # noqa: E402
from bench.heldout_pairs import held_out  # noqa: E402
from feedback.raters import RATERS  # noqa: E402
from feedback.store import FeedbackStore  # noqa: E402
from rlcm.clip import load_clip  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from studio.serving import BASE, ServedGenerator, most_distinct_pair  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("rater", choices=sorted(RATERS))
ap.add_argument("--streams", type=int, default=6)
ap.add_argument("--rules", default="random,distinct")
ap.add_argument("--fits", default="default")
ap.add_argument("--at", default="10,20")
args = ap.parse_args()
RULES, AT = args.rules.split(","), sorted(int(n) for n in args.at.split(","))
FITS = {"default": reward_model.FitConfig(), "nocues": reward_model.FitConfig(cues=False)}
FITS = {name: FITS[name] for name in args.fits.split(",")}
rater = RATERS[args.rater]
gen = ServedGenerator(StudioSettings(data_dir=tempfile.mkdtemp()))
clip = load_clip("toy-clip", device="cpu")
train = get_prompts("toy", "train", 400, seed=3)
held = held_out(gen, rater, 60)

rows = {(rule, fit): [] for rule in RULES for fit in FITS}
for st in range(args.streams):
    rng = random.Random(100 + st)
    draws = []
    for _ in range(AT[-1]):
        p = rng.choice(train)
        seeds = [rng.randrange(2**31) for _ in range(4)]
        draws.append((p, seeds, gen.generate([p] * 4, seeds, version=BASE)[0]))
    for rule in RULES:
        store, decided, row = FeedbackStore(tempfile.mkdtemp()), 0, {fit: {} for fit in FITS}
        for t, (p, seeds, ims) in enumerate(draws):
            a, b = (0, 1) if rule == "random" else most_distinct_pair(ims)
            ids = [store.add_sample(ims[a], p, seeds[a], 4, 8.0), store.add_sample(ims[b], p, seeds[b], 4, 8.0)]
            choice = rater(ims[a], ims[b], p)
            decided += choice != "tie"
            store.record_comparison(ids[0], ids[1], choice, "sim", uuid.uuid4().hex)
            if t + 1 in AT:
                for fit, cfg in FITS.items():
                    try:
                        rm, _ = reward_model.fit(store, clip, cfg)
                        row[fit][t + 1] = (decided, *held.measure(rm))
                    except ValueError:  # too few decided pairs to fit
                        row[fit][t + 1] = (decided, None, None)
        for fit in FITS:
            rows[rule, fit].append(row[fit])
            print(args.rater, "stream", st, rule, fit, {n: tuple(None if x is None else round(x, 3) for x in v)
                                                        for n, v in row[fit].items()}, flush=True)

summary = {}
for (rule, fit), rs in rows.items():
    for n in AT:
        v = [r[n] for r in rs]
        fitted = [x for x in v if x[1] is not None]
        key = f"{rule}/{fit}@{n}"
        summary[key] = {
            "decided": round(float(np.mean([x[0] for x in v])), 2), "fits": len(fitted),
            "accuracy": round(float(np.mean([x[1] for x in fitted])), 3) if fitted else None,
            "best_of_4": round(float(np.mean([x[2] for x in fitted])), 3) if fitted else None}
        print(f"{args.rater:14s} {rule:8s} {fit:8s} {n:2d} labels: {summary[key]}")
print(json.dumps({"rater": args.rater, "streams": args.streams, "heldout_decided_pairs": len(held.decided), **summary}))
