"""The paper's JPEG tasks on the toy LCM: held-out reward and prompt fidelity before/after M minutes of RLCM.

Example:
  python bench/rl_tasks.py --minutes 10                 # both tasks, 10 minutes each, writes bench/RESULTS.md
  python bench/rl_tasks.py --minutes 1 --quick          # a wiring check, writes nothing
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlcm.plot import reward_curve  # noqa: E402
from rlcm.trainer import RLCMConfig, RLCMTrainer  # noqa: E402


def run_task(reward: str, minutes: float, model: str, out: Path, **kw) -> dict:
    cfg = RLCMConfig(model=model, reward=reward, epochs=10_000, eval_every=10, eval_prompts=64,
                     output_dir=str(out / reward), checkpoint_every=10_000, **kw)
    trainer = RLCMTrainer(cfg)
    stop = threading.Event()
    timer = threading.Timer(minutes * 60, stop.set)
    t0 = time.time()
    timer.start()
    trainer.train(stop=stop)  # the final evaluation happens after the stop, outside the budget
    timer.cancel()
    final = {"epoch": trainer.epoch, **trainer.evaluate()}
    hist = trainer.history + [final]
    reward_curve(hist, out / f"{reward}.png", f"{reward}: RLCM on the toy LCM")
    first = hist[0]
    return {"reward": reward, "epochs": trainer.epoch, "train_minutes": trainer.train_seconds / 60,
            "wall_minutes": (time.time() - t0) / 60, "before": first["eval_reward_mean"],
            "after": final["eval_reward_mean"], "fid_before": first["eval_fidelity"],
            "fid_after": final["eval_fidelity"], "png": str(out / f"{reward}.png")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock per task")
    p.add_argument("--model", default="data/models/toy-lcm")
    p.add_argument("--tasks", nargs="*", default=["jpeg_compressibility", "jpeg_incompressibility"])
    p.add_argument("--out", default="bench/out/rl_tasks")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--kl-coef", type=float, default=0.0, help="KL anchor to the base model (RLCMConfig.kl_coef)")
    p.add_argument("--quick", action="store_true", help="tiny run, RESULTS.md untouched")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"lr": args.lr} if args.lr else {}
    kw["kl_coef"] = args.kl_coef
    if args.quick:
        kw.update(prompts_per_epoch=2, images_per_prompt=4, train_batch_size=8, sample_batch_size=8)
    rows = [run_task(t, args.minutes, args.model, out, **kw) for t in args.tasks]
    lines = ["| task | epochs | train min | held-out reward before → after (kB) | toy fidelity before → after |",
             "|---|---|---|---|---|"]
    for r in rows:
        sign = -1 if r["reward"] == "jpeg_compressibility" else 1  # report JPEG size, not the negated reward
        lines.append(f"| {r['reward']} | {r['epochs']} | {r['train_minutes']:.1f} | "
                     f"{sign * r['before']:.3f} → {sign * r['after']:.3f} | "
                     f"{100 * r['fid_before']:.1f}% → {100 * r['fid_after']:.1f}% |")
    lines += ["", "Held-out: 64 prompts of attribute combinations never used in training, fixed seeds. "
              "RLCM defaults of `RLCMConfig` (4 steps, guidance 8, LoRA r8, 32 samples per epoch, one optimiser "
              f"step per epoch), KL anchor to the base `kl_coef={args.kl_coef}`.", ""] + [f"![{r['reward']}](figures/{Path(r['png']).name})" for r in rows]
    md = "\n".join(lines)
    print(md)
    if not args.quick:
        from results import update_section

        for r in rows:
            import shutil

            (Path(__file__).parent / "figures").mkdir(exist_ok=True)
            shutil.copy(r["png"], Path(__file__).parent / "figures" / Path(r["png"]).name)
        update_section("RLCM on the toy LCM: JPEG compressibility and incompressibility", md)


if __name__ == "__main__":
    main()
