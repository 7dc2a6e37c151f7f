"""How fast a studio round's epoch runs at each batch size (images per forward pass), alone on the machine.

    python bench/round_batch.py                  # 16 and the default (a whole epoch on the toy LCM); RESULTS.md
    python bench/round_batch.py 8 16 32 64 --epochs 4

Each row builds the round's own config (`studio.rounds.round_config`) from the app's default settings with only
`round_batch` changed, and runs its trainer's epochs one phase at a time: sampling the epoch's images (with the
reward computed beside it), the training pass (one optimiser step), and the keeper's evaluation on held-out
prompts. The reward is the `warm_colours` rater's warmth score, so no reward model is needed. The first epoch
warms up and is left out of the medians. The optimiser step sees the same mean gradient at every batch size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from feedback.raters import warmth  # noqa: E402
from results import results_path, update_section  # noqa: E402
from rlcm.trainer import RLCMTrainer  # noqa: E402
from studio.rounds import round_config  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402


def time_epochs(batch: int, epochs: int) -> dict:
    s = StudioSettings(round_batch=batch, admin_password="x")
    cfg = round_config(s, Path(tempfile.mkdtemp(prefix="round-batch-")), rid=1)
    trainer = RLCMTrainer(cfg, reward_fn=lambda images, prompts: np.array([warmth(i) for i in images], np.float32))
    rows = []
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        trajs, rewards, prompts = trainer._sample_epoch()
        t1 = time.perf_counter()
        trainer._train_epoch(trajs, trainer._advantages(rewards, prompts)[0])
        t2 = time.perf_counter()
        trainer.epoch += 1
        trainer.evaluate()
        rows.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    sample, train, evaluate = (float(x) for x in np.median(rows[1:], axis=0))
    return {"batch": s.round_batch_size, "images": cfg.samples_per_epoch, "eval_images": cfg.eval_prompts,
            "sample_s": sample, "train_s": train, "eval_s": evaluate, "epoch_s": sample + train + evaluate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("batches", type=int, nargs="*", default=[16, 0], help="round_batch values (0: the default)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per batch size (after one warm-up epoch)")
    ap.add_argument("--quick", action="store_true", help="one timed epoch; throw-away RESULTS.md")
    args = ap.parse_args()
    res = [time_epochs(b, 1 if args.quick else args.epochs) for b in args.batches]
    for r in res:
        print(r, flush=True)
    lines = ["| batch (images per pass) | sampling + reward | training pass | evaluation | epoch |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['sample_s']:.2f} s | {r['train_s']:.2f} s | {r['eval_s']:.2f} s | "
              f"**{r['epoch_s']:.2f} s** |" for r in res]
    intro = (f"One epoch of a studio round with the app's defaults ({res[0]['images']} images sampled and trained on, "
             f"{res[0]['eval_images']} evaluated), medians of {1 if args.quick else args.epochs} epochs after a "
             "warm-up, the machine otherwise idle. In the live loop the pair queue and the rater share the cores, "
             "so epochs there take longer.\n\n")
    print(update_section("Round batch size", intro + "\n".join(lines) + "\n", results_path(args.quick)))


if __name__ == "__main__":
    main()
