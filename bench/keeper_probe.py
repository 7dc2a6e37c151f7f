"""How well a round's own fidelity evaluation predicts the confirmation that follows it (a one-off probe).

    PROBE_ORACLE=big_centred python bench/keeper_probe.py RM_DIR [--epochs 12] [--sets 32,128] [--confirm 256]

A round hands over its latest evaluated epoch within 2 points of the base's toy prompt fidelity on its own
held-out prompts (studio.rounds.FidelityKeeper, `round_eval_prompts` of them, one seed each), and the studio then
confirms that on new prompts x 2 seeds (studio.checks). This trains one round from the base with the studio's
round recipe (`round_config` with the app's settings; the alignment guard relative, scaled on base samples as in
bench/round_probe.py) against the exported reward model RM_DIR, and after every other epoch measures the paired
fidelity change (points, with its standard error) on evaluation sets of each size in --sets (their own prompts
and seeds) and on a confirmation draw of --confirm prompts x 2 seeds, where it also counts the rater's win rate
over the base (ties half). It then says which epoch each keeper rule would hand over and how that epoch fares in
the confirmation. One JSON line per measured epoch, then one per rule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import reward_model  # noqa: E402
from feedback.raters import load_rater  # noqa: E402
from live_loop import oracle_wins  # noqa: E402 (beside this script)
from round_probe import guard_pairs  # noqa: E402 (beside this script)
from rlcm.prompts import get_prompts  # noqa: E402
from rlcm.rewards import with_alignment_guard  # noqa: E402
from rlcm.trainer import RLCMTrainer  # noqa: E402
from studio import checks  # noqa: E402
from studio.rounds import round_config  # noqa: E402
from studio.serving import BASE, ServedGenerator  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("rm_dir")
ap.add_argument("--epochs", type=int, default=None, help="default: the studio's round from the base")
ap.add_argument("--every", type=int, default=2)
ap.add_argument("--sets", default="32,128", help="evaluation-set sizes (prompts, one seed each)")
ap.add_argument("--confirm", type=int, default=256, help="confirmation prompts (x 2 seeds)")
ap.add_argument("--draw", type=int, default=1, help="the confirmation draw (the studio's round id)")
args = ap.parse_args()

oracle = load_rater(os.environ.get("PROBE_ORACLE", "warm_colours"))
rm = reward_model.load(args.rm_dir)
work = Path(tempfile.mkdtemp(prefix="keeper_probe_"))
settings = StudioSettings(data_dir=work / "studio")
gen = ServedGenerator(settings)
cfg = round_config(settings, work / "round", rid=1)
if args.epochs:
    cfg.epochs = args.epochs
cfg.eval_every, cfg.checkpoint_every = 0, 10**6  # measured here instead

score = lambda im, p: rm.score(im, list(p)).cpu().numpy().astype(np.float32)  # noqa: E731
scorer = with_alignment_guard(score, rm.clip, settings.alignment_guard, pairs=guard_pairs(gen))

sets = {}
for k, n in enumerate(int(x) for x in args.sets.split(",")):  # like the trainer's: n held-out prompts, 1 seed
    prompts = get_prompts("toy", "heldout", n, seed=900 + k)[:n]
    seeds = [10_000 + 1000 * k + i for i in range(len(prompts))]
    sets[n] = (prompts, seeds, checks.image_fidelity(gen.generate(prompts, seeds, version=BASE)[0], prompts))
cp, cs = checks.confirmation_set(args.confirm, draw=args.draw)
base_confirm = gen.generate(cp, cs, version=BASE)[0]
base_confirm_fid = checks.image_fidelity(base_confirm, cp)
rows: list[dict] = []
t0 = time.time()


def measure(trainer: RLCMTrainer, epoch: int) -> None:
    row = {"epoch": epoch}
    for n, (prompts, seeds, base_fid) in sets.items():
        ch = checks.fidelity_change(base_fid, checks.image_fidelity(trainer.sample_images(prompts, seeds), prompts),
                                    prompts)
        row[f"eval{n}"] = [round(ch["change_points"], 2), round(ch["se_points"], 2)]
    tuned = trainer.sample_images(cp, cs)
    ch = checks.fidelity_change(base_confirm_fid, checks.image_fidelity(tuned, cp), cp)
    row["confirm"] = [round(ch["change_points"], 2), round(ch["se_points"], 2)]
    row["confirm_passes"] = checks.confirm_reason(ch) is None
    row["win"] = round(float(np.mean(oracle_wins(oracle, base_confirm, tuned, cp))), 3)
    row["s"] = round(time.time() - t0)
    rows.append(row)
    print(json.dumps(row), flush=True)


trainer = RLCMTrainer(cfg, reward_fn=scorer)
trainer.callbacks.append(lambda e: measure(trainer, e["epoch"])
                         if e["type"] == "epoch" and e["epoch"] % args.every == 0 else None)
trainer.train()
if rows[-1]["epoch"] != cfg.epochs:
    measure(trainer, cfg.epochs)

for n in sets:
    for margin in (0.0, 1.0):  # keep an epoch when change >= -2 + margin x its standard error
        kept = [r for r in rows if r[f"eval{n}"][0] >= -checks.KEEP_FIDELITY_DROP + margin * r[f"eval{n}"][1]]
        pick = kept[-1] if kept else None
        print(json.dumps({"rule": f"eval{n} >= -2 + {margin:g} se", "rm": Path(args.rm_dir).name,
                          "oracle": oracle.__name__, "epoch": pick and pick["epoch"],
                          "confirm": pick and pick["confirm"], "passes": pick and pick["confirm_passes"],
                          "win": pick and pick["win"]}))
