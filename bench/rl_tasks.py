"""The paper's JPEG tasks on the toy LCM: held-out reward and prompt fidelity before/after M minutes of RLCM.

Example:
  python bench/rl_tasks.py --minutes 10                 # both tasks, 10 minutes each, writes bench/RESULTS.md
  python bench/rl_tasks.py --minutes 10 --guard 0.1 0   # compressibility with a CLIP prompt-alignment guard
  python bench/rl_tasks.py --minutes 10 --kl-coef 0.1 --kl-units x0   # anchored to the base's clean latents
  python bench/rl_tasks.py --minutes 1 --quick          # a wiring check, writes nothing
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlcm.plot import reward_curve  # noqa: E402
from rlcm.policy import KL_UNITS  # noqa: E402
from rlcm.rewards import get_reward  # noqa: E402
from rlcm.toy.checker import fidelity  # noqa: E402
from rlcm.trainer import RLCMConfig, RLCMTrainer  # noqa: E402


def held_out(trainer: RLCMTrainer, seeds: int = 4) -> dict:
    """JPEG size (kB) and toy fidelity on the held-out prompts x `seeds` fixed seeds, whatever the training
    reward (it may carry an alignment guard). 4 seeds: one seed per prompt leaves the fidelity ~2 points noisy."""
    prompts = [p for _ in range(seeds) for p in trainer.eval_prompt_list]
    images = trainer.sample_images(prompts, [10_000 + i for i in range(len(prompts))])
    kb = -get_reward("jpeg_compressibility")(images, prompts)
    return {"kb": float(kb.mean()), "fidelity": fidelity(images, prompts)["score"]}


def run_task(reward: str, minutes: float, model: str, out: Path, guard: float = 0.0, **kw) -> dict:
    spec = f"{reward}+{guard:g}*clip_alignment" if guard else reward
    shutil.rmtree(out / reward, ignore_errors=True)  # a fresh run: no stale log rows or checkpoint
    cfg = RLCMConfig(model=model, reward=spec, epochs=10_000, eval_every=10, eval_prompts=64,
                     output_dir=str(out / reward), checkpoint_every=10_000, **kw)
    trainer = RLCMTrainer(cfg)
    before = held_out(trainer)
    stop = threading.Event()
    timer = threading.Timer(minutes * 60, stop.set)
    t0 = time.time()
    timer.start()
    trainer.train(stop=stop)  # the final evaluation happens after the stop, outside the budget
    timer.cancel()
    final = {"epoch": trainer.epoch, **trainer.evaluate()}
    after = held_out(trainer)
    hist = trainer.history + [final]
    reward_curve(hist, out / f"{reward}.png", f"{spec}: RLCM on the toy LCM")
    return {"reward": reward, "spec": spec, "epochs": trainer.epoch, "train_minutes": trainer.train_seconds / 60,
            "wall_minutes": (time.time() - t0) / 60, "kb_before": before["kb"], "kb_after": after["kb"],
            "fid_before": before["fidelity"], "fid_after": after["fidelity"], "png": str(out / f"{reward}.png")}


def section(rows: list[dict], kl_coef: float, kl_units: str) -> str:
    lines = ["| task | training reward | epochs | train min | held-out JPEG size before → after (kB) | "
             "toy fidelity before → after |", "|---|---|---|---|---|---|"]
    for r in rows:
        change = 100 * (r["kb_after"] / r["kb_before"] - 1)
        lines.append(f"| {r['reward']} | `{r['spec']}` | {r['epochs']} | {r['train_minutes']:.1f} | "
                     f"{r['kb_before']:.3f} → {r['kb_after']:.3f} ({change:+.1f}%) | "
                     f"{100 * r['fid_before']:.1f}% → {100 * r['fid_after']:.1f}% "
                     f"({100 * (r['fid_after'] - r['fid_before']):+.1f} pts) |")
    lines += ["", "Held-out: 64 prompts of attribute combinations never used in training x 4 fixed seeds. "
              "RLCM defaults of `RLCMConfig` (4 steps, guidance 8, LoRA r8, 32 samples per epoch, one optimiser "
              f"step per epoch), KL anchor to the base `kl_coef={kl_coef:g}` in `{kl_units}` units.", ""]
    lines += [f"![{r['reward']}](figures/{Path(r['png']).name})" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock per task")
    p.add_argument("--model", default="data/models/toy-lcm")
    p.add_argument("--tasks", nargs="*", default=["jpeg_compressibility", "jpeg_incompressibility"])
    p.add_argument("--out", default="bench/out/rl_tasks")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="training seed (also picks the held-out prompts)")
    p.add_argument("--kl-coef", type=float, default=0.0, help="KL anchor to the base model (RLCMConfig.kl_coef)")
    p.add_argument("--kl-units", default="action", choices=KL_UNITS,
                   help="units of the KL anchor (RLCMConfig.kl_units): x0 anchors the layout step too")
    p.add_argument("--guard", type=float, nargs="*", default=[],
                   help="per task: reward + GUARD x CLIP prompt score (x100), e.g. --guard 0.1 0 (0: none)")
    p.add_argument("--quick", action="store_true", help="tiny run, RESULTS.md untouched")
    p.add_argument("--no-record", action="store_true", help="print only; RESULTS.md untouched")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"lr": args.lr} if args.lr else {}
    kw.update(kl_coef=args.kl_coef, kl_units=args.kl_units, seed=args.seed)
    if args.quick:
        kw.update(prompts_per_epoch=2, images_per_prompt=4, train_batch_size=8, sample_batch_size=8)
    guards = (args.guard + [0.0] * len(args.tasks))[: len(args.tasks)]
    rows = [run_task(t, args.minutes, args.model, out, guard=g, **kw) for t, g in zip(args.tasks, guards)]
    md = section(rows, args.kl_coef, args.kl_units)
    print(md)
    if not (args.quick or args.no_record):
        from results import update_section

        for r in rows:  # one section per task, so tasks may run as separate processes
            (Path(__file__).parent / "figures").mkdir(exist_ok=True)
            shutil.copy(r["png"], Path(__file__).parent / "figures" / Path(r["png"]).name)
            update_section(f"RLCM on the toy LCM: {r['reward']}", section([r], args.kl_coef, args.kl_units))


if __name__ == "__main__":
    main()
