"""The reward model from the first labels, under two ways of choosing a pair before any reward model exists.

    python bench/cold_pairs.py big_centred --streams 6

Before its first fit the studio's queue has nothing to ask a reward model, and most random pairs of two seeds are
ties to a rater (the images differ in nothing it judges). Each stream draws 20 training prompts with 4 base seeds
each; the same draws are labelled by the rater under two rules: "random" (the first two seeds, the queue before
fd13197) and "distinct" (`studio.serving.most_distinct_pair`, the queue now). At 10 and 20 labels the studio's
reward model (default FitConfig) is fitted and measured on held-out prompts (60 prompts x the 6 pairs of 4 seeds,
decided pairs only): pairwise accuracy, and the rater's win rate (ties half) of the model's best of 4 against the
first seed. Prints per-stream rows, means over streams and a final JSON line.
"""
import argparse
import itertools
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
from feedback.raters import RATERS  # noqa: E402
from feedback.store import FeedbackStore  # noqa: E402
from rlcm.clip import load_clip  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from studio.serving import BASE, ServedGenerator, most_distinct_pair  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("rater", choices=sorted(RATERS))
ap.add_argument("--streams", type=int, default=6)
args = ap.parse_args()
rater = RATERS[args.rater]
gen = ServedGenerator(StudioSettings(data_dir=tempfile.mkdtemp()))
clip = load_clip("toy-clip", device="cpu")
train = get_prompts("toy", "train", 400, seed=3)
held = get_prompts("toy", "heldout", 100, seed=4)[:60]
PAIRS = list(itertools.combinations(range(4), 2))
H = [gen.generate([p] * 4, [50_000 + 4 * k + s for s in range(4)], version=BASE)[0] for k, p in enumerate(held)]
hl = [(k, a, b, rater(H[k][a], H[k][b], held[k])) for k in range(len(held)) for a, b in PAIRS]
hl = [x for x in hl if x[3] != "tie"]
WIN = {"a": 1.0, "tie": 0.5, "b": 0.0}


def measure(rm) -> tuple[float, float]:
    s = [rm.score(H[k], [p] * 4) for k, p in enumerate(held)]  # each held-out image scored once
    acc = np.mean([(float(s[k][a]) > float(s[k][b])) == (y == "a") for k, a, b, y in hl])
    best = np.mean([WIN[rater(H[k][int(s[k].argmax())], H[k][0], p)] for k, p in enumerate(held)])
    return float(acc), float(best)


rows = {"random": [], "distinct": []}
for st in range(args.streams):
    rng = random.Random(100 + st)
    draws = []
    for _ in range(20):
        p = rng.choice(train)
        seeds = [rng.randrange(2**31) for _ in range(4)]
        draws.append((p, seeds, gen.generate([p] * 4, seeds, version=BASE)[0]))
    for rule in rows:
        store, decided, row = FeedbackStore(tempfile.mkdtemp()), 0, {}
        for t, (p, seeds, ims) in enumerate(draws):
            a, b = (0, 1) if rule == "random" else most_distinct_pair(ims)
            ids = [store.add_sample(ims[a], p, seeds[a], 4, 8.0), store.add_sample(ims[b], p, seeds[b], 4, 8.0)]
            choice = rater(ims[a], ims[b], p)
            decided += choice != "tie"
            store.record_comparison(ids[0], ids[1], choice, "sim", uuid.uuid4().hex)
            if t + 1 in (10, 20):
                try:
                    rm, _ = reward_model.fit(store, clip, reward_model.FitConfig())
                    row[t + 1] = (decided, *measure(rm))
                except ValueError:  # too few decided pairs to fit
                    row[t + 1] = (decided, None, None)
        rows[rule].append(row)
        print(args.rater, "stream", st, rule, {n: tuple(None if x is None else round(x, 3) for x in v)
                                               for n, v in row.items()}, flush=True)

summary = {}
for rule, rs in rows.items():
    for n in (10, 20):
        v = [r[n] for r in rs]
        fitted = [x for x in v if x[1] is not None]
        summary[f"{rule}@{n}"] = {
            "decided": round(float(np.mean([x[0] for x in v])), 2), "fits": len(fitted),
            "accuracy": round(float(np.mean([x[1] for x in fitted])), 3) if fitted else None,
            "best_of_4": round(float(np.mean([x[2] for x in fitted])), 3) if fitted else None}
        print(f"{args.rater:14s} {rule:8s} {n:2d} labels: {summary[f'{rule}@{n}']}")
print(json.dumps({"rater": args.rater, "streams": args.streams, "heldout_decided_pairs": len(hl), **summary}))
