"""Reward-model learning curves under two ways of choosing the pair to show (a one-off simulation).

    python bench/pair_selection.py big_centred half     # the studio's rule (RewardModel.pair_uncertainty_of: P(a over b)
                                                        # near 1/2 plus the heads' spread)
    python bench/pair_selection.py big_centred spread   # the heads' disagreement alone (tried in 6b989b9, reverted)

A simulated rater labels a stream of 60 pairs of base toy samples: a random training prompt, 4 seeds, one pair of
the 6 shown, chosen by the criterion from the current reward model (the studio's fit, default FitConfig, refitted
every 10 labels; the first 10 labels are the first two seeds, the same stream for every criterion, as in the
studio before its first fit). At 20/40/60 labels it prints the share of labels so far that were decided (not ties),
the model's accuracy on up to 300 held-out decided pairs (100 held-out prompts x the 6 pairs of 4 seeds), and
the rater's win rate (ties half) of the model's best of 4 against the first seed on those prompts. One JSON line.
"""
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
import torch  # noqa: E402

import reward_model  # noqa: E402
from bench.heldout_pairs import PAIRS, held_out  # noqa: E402
from feedback.raters import RATERS  # noqa: E402
from feedback.store import FeedbackStore  # noqa: E402
from rlcm.clip import load_clip  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from studio.serving import BASE, ServedGenerator  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402

rater_name, crit = sys.argv[1], sys.argv[2]
if crit not in ("half", "spread"):
    raise SystemExit(f"criterion {crit!r}; valid: half, spread")
rater = RATERS[rater_name]
gen = ServedGenerator(StudioSettings(data_dir=tempfile.mkdtemp()))
clip = load_clip("toy-clip", device="cpu")
train = get_prompts("toy", "train", 400, seed=3)
held = held_out(gen, rater, 100, max_pairs=300)
rng = random.Random(11)
ii = torch.tensor([a for a, b in PAIRS]); jj = torch.tensor([b for a, b in PAIRS])

store = FeedbackStore(tempfile.mkdtemp())
rm, out, decided = None, [], []
for t in range(60):
    p = rng.choice(train)
    seeds = [rng.randrange(2**31) for _ in range(4)]
    ims = gen.generate([p] * 4, seeds, version=BASE)[0]
    if rm is None or t < 10:
        a, b = 0, 1
    else:
        r = rm.head_scores_for(ims, [p] * 4)
        score = (rm.pair_uncertainty_of(r[:, ii], r[:, jj]) if crit == "half"
                 else rm.pair_probability(r[:, ii], r[:, jj])[1])
        a, b = PAIRS[int(score.argmax())]
    ids = [store.add_sample(ims[a], p, seeds[a], 4, 8.0), store.add_sample(ims[b], p, seeds[b], 4, 8.0)]
    c = rater(ims[a], ims[b], p)
    decided.append(c != "tie")
    store.record_comparison(ids[0], ids[1], c, "sim", uuid.uuid4().hex)
    n = t + 1
    if n % 10 == 0:
        try:
            rm, _ = reward_model.fit(store, clip, reward_model.FitConfig())
        except ValueError as e:  # too few decided pairs to fit
            print("fit failed", n, e, file=sys.stderr); continue
        if n in (20, 40, 60):
            acc, best = held.measure(rm)
            out.append({"labels": n, "decided": round(float(np.mean(decided)), 3), "acc": round(acc, 3),
                        "best4": round(best, 3)})
print(json.dumps({"rater": rater_name, "crit": crit, "heldout_decided": len(held.decided), "curve": out}))
