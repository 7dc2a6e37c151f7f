"""RLCM (toy LCM, 8 and 4 steps) against DDPO (toy teacher, DDIM eta=1, 50 steps, CFG) under one reward.

    python bench/rlcm_vs_ddpo.py --minutes 10                        # real run (~35 min), writes bench/RESULTS.md
    python bench/rlcm_vs_ddpo.py --minutes 5 --ddpo-minutes 30       # DDPO needs longer to move on a CPU
    python bench/rlcm_vs_ddpo.py --minutes 10 --reward preference --reward-model runs/live/reward_model
    OMP_NUM_THREADS=1 python bench/rlcm_vs_ddpo.py --quick --model /tmp/bt/models/toy-lcm \
        --teacher /tmp/bt/models/toy-teacher                         # seconds; throw-away RESULTS.md

Every method runs the same `RLCMTrainer` (the same loop is DDPO on a DDIM pipeline) with the same reward,
prompts per epoch, images per prompt, batch sizes, optimiser and seed (so the same prompts in each epoch),
one after the other on this CPU, each for `--minutes` of training time (the trainer's own clock: sampling,
rewards and gradient steps; evaluation excluded). Held-out reward (fixed prompts and seeds) is measured
after the first epoch and then whenever training time has grown by 25% or by a tenth of the budget.
Reported: reward against training seconds and against reward queries (PNG), the time each method first
reaches the held-out reward DDPO ends at (linear between evaluations), RLCM's speed-up over DDPO, and
rollout seconds per image (every policy.sample call, training and evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from results import results_path, update_section  # noqa: E402
from rlcm.__main__ import learned_reward  # noqa: E402
from rlcm.trainer import RLCMConfig, RLCMTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "bench" / "figures"


def shown(path: Path, start: Path) -> str:
    """`path` relative to `start` when it lies inside the repository, else absolute."""
    path = Path(path).resolve()
    return os.path.relpath(path, start) if path.is_relative_to(ROOT) else str(path)


def train_for(name: str, cfg: RLCMConfig, budget_s: float) -> dict:
    """Train until `budget_s` seconds of training; held-out evaluations on a 25%-or-tenth-of-budget schedule."""
    trainer = RLCMTrainer(cfg, reward_fn=learned_reward(cfg))  # rlcm takes a learned reward as a function
    rollout = {"s": 0.0, "images": 0}
    sample = trainer.policy.sample

    def timed_sample(prompts, **kw):
        t = time.perf_counter()
        out = sample(prompts, **kw)
        rollout["s"] += time.perf_counter() - t
        rollout["images"] += len(prompts)
        return out

    trainer.policy.sample = timed_sample
    rows = [{"epoch": 0, "time": 0.0, "reward_queries": 0, **trainer.evaluate()}]
    stop = threading.Event()

    def on_event(e: dict) -> None:
        if e["type"] != "epoch":
            return
        last = e["time"] >= budget_s
        if last:
            stop.set()
        prev = rows[-1]["time"]
        if last or prev == 0 or e["time"] >= min(1.25 * prev, prev + budget_s / 10):
            rows.append({k: e[k] for k in ("epoch", "time", "reward_queries", "reward_mean")} | trainer.evaluate())
            r = rows[-1]
            print(f"  {name}: epoch {r['epoch']:4d}  {r['time']:7.1f}s  {r['reward_queries']:6d} queries  "
                  f"held-out reward {r['eval_reward_mean']:.4f}", flush=True)

    trainer.callbacks.append(on_event)
    t0 = time.perf_counter()
    trainer.train(stop=stop)
    return {"name": name, "rows": rows, "wall_s": time.perf_counter() - t0, "epochs": trainer.epoch,
            "rollout_s_per_image": rollout["s"] / max(rollout["images"], 1), "steps": cfg.num_steps}


def time_to_reach(rows: list[dict], target: float, key: str = "time") -> float | None:
    """First `key` at which the held-out reward reaches `target`, linear between evaluations."""
    for a, b in zip(rows, rows[1:]):
        if a["eval_reward_mean"] >= target:
            return a[key]
        if b["eval_reward_mean"] >= target:
            f = (target - a["eval_reward_mean"]) / (b["eval_reward_mean"] - a["eval_reward_mean"])
            return a[key] + f * (b[key] - a[key])
    return rows[0][key] if rows[0]["eval_reward_mean"] >= target else None


def plot(runs: list[dict], target: float, reward: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "time", "training wall-clock (s)"), (axes[1], "reward_queries", "reward queries")):
        for run in runs:
            ax.plot([r[key] for r in run["rows"]], [r["eval_reward_mean"] for r in run["rows"]], "o-", ms=3,
                    label=run["name"])
        ax.axhline(target, ls="--", c="grey", lw=1, label="DDPO's final reward")
        ax.set_xlabel(label)
        ax.set_ylabel(f"held-out {reward}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/toy-lcm", help="LCM pipeline directory (RLCM)")
    ap.add_argument("--teacher", default="data/models/toy-teacher", help="DDIM pipeline directory (DDPO)")
    ap.add_argument("--clip", default="data/models/toy-clip", help="backbone for --reward clip_alignment")
    ap.add_argument("--reward", default="jpeg_compressibility", help="name in rlcm.rewards.REWARDS")
    ap.add_argument("--reward-model", default=None, help="exported reward model directory for --reward preference")
    ap.add_argument("--minutes", type=float, default=10.0, help="training time per RLCM run")
    ap.add_argument("--ddpo-minutes", type=float, default=None, help="DDPO's training time (default: --minutes)")
    ap.add_argument("--lcm-steps", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--ddpo-steps", type=int, default=50)
    ap.add_argument("--ddpo-guidance", type=float, default=5.0)
    ap.add_argument("--lcm-guidance", type=float, default=8.0)
    ap.add_argument("--prompts-per-epoch", type=int, default=8)
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--eval-prompts", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None, help="plots and raw rows (default bench/figures; temp with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: 3 s per method, 2x2 samples per epoch, DDPO at 10 steps; no bench/RESULTS.md")
    args = ap.parse_args()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    kwargs = {"model": args.reward_model} if args.reward == "preference" else {}
    if args.reward == "clip_alignment":
        kwargs = {"clip": args.clip}
    if args.reward == "preference" and not args.reward_model:
        ap.error("--reward preference needs --reward-model DIR (e.g. one exported by bench/live_loop.py)")
    budget = 3.0 if args.quick else 60 * args.minutes
    ddpo_budget = budget if args.quick or args.ddpo_minutes is None else 60 * args.ddpo_minutes
    out_dir = Path(args.out_dir or (tempfile.mkdtemp(prefix="bench-quick-") if args.quick else FIGURES))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rlcm-vs-ddpo-"))
    ppe, ipp, batch = (2, 2, 4) if args.quick else (args.prompts_per_epoch, args.images_per_prompt, 16)
    base = dict(reward=args.reward, reward_kwargs=kwargs, prompts_per_epoch=ppe, images_per_prompt=ipp,
                sample_batch_size=min(batch, ppe * ipp), train_batch_size=min(batch, ppe * ipp), epochs=10**9,
                eval_every=0, eval_prompts=4 if args.quick else args.eval_prompts, checkpoint_every=10**9,
                seed=args.seed, device="cpu")
    methods = [(f"RLCM, {k} steps", RLCMConfig(model=args.model, num_steps=k, guidance_scale=args.lcm_guidance,
                                               output_dir=str(work / f"rlcm{k}"), **base)) for k in args.lcm_steps]
    ddpo_steps = 10 if args.quick else args.ddpo_steps
    methods.append((f"DDPO, {ddpo_steps} DDIM steps", RLCMConfig(
        model=args.teacher, num_steps=ddpo_steps, guidance_scale=args.ddpo_guidance, output_dir=str(work / "ddpo"),
        **base)))
    runs = []
    for i, (name, cfg) in enumerate(methods):
        b = ddpo_budget if i == len(methods) - 1 else budget
        print(f"{name}: {b:.0f}s of training", flush=True)
        runs.append(train_for(name, cfg, b))

    ddpo = runs[-1]
    target = ddpo["rows"][-1]["eval_reward_mean"]
    gain = target - ddpo["rows"][0]["eval_reward_mean"]  # fairer when the base models start apart
    png = plot(runs, target, args.reward, out_dir / f"rlcm_vs_ddpo_{args.reward}.png")
    raw = out_dir / f"rlcm_vs_ddpo_{args.reward}.json"
    for run in runs:
        rows = run["rows"]
        run.update(t_target=time_to_reach(rows, target), q_target=time_to_reach(rows, target, "reward_queries"),
                   t_gain=time_to_reach(rows, rows[0]["eval_reward_mean"] + gain) if gain > 0 else None)
    # the paper's measure: DDPO trains its whole budget to end at `target`; how fast does RLCM get there?
    ddpo.update(t_target=ddpo["rows"][-1]["time"], q_target=ddpo["rows"][-1]["reward_queries"],
                t_gain=ddpo["rows"][-1]["time"] if gain > 0 else None)
    raw.write_text(json.dumps(runs, indent=1))

    def secs(t):
        return "not reached" if t is None else "at start" if t == 0 else f"{t:.1f}"

    def speedup(t, t_ddpo):
        return "–" if t is None or t_ddpo is None else "∞ (at start)" if t == 0 else f"{t_ddpo / t:.1f}x"

    def gain_secs(t):
        return "DDPO did not improve" if gain <= 0 else secs(t)

    md = [f"Reward `{args.reward}`{f' ({args.reward_model})' if args.reward_model else ''}; "
          f"{ppe} prompts x {ipp} images per epoch for every method, same seed and prompts, "
          f"{budget / 60:g} min of training per RLCM run and {ddpo_budget / 60:g} min for DDPO on the same CPU, "
          f"held-out reward on {base['eval_prompts']} "
          f"prompts with fixed seeds. LCM guidance {args.lcm_guidance:g}; DDPO: DDIM eta 1, CFG "
          f"{args.ddpo_guidance:g}. Target: DDPO's final held-out reward {target:.4f}, i.e. a gain of "
          f"{gain:+.4f} over its start. As in the paper, DDPO's time is its whole training time (it ends at the "
          "target) and each RLCM run's is the time it first reaches the target; also the time to DDPO's gain over "
          "each method's own start (the base models start at different rewards).", "",
          "| method | epochs | held-out reward start -> end | s to target | speed-up | s to DDPO's gain | speed-up "
          "| queries to target | rollout s/image | rollout speed-up |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        rows = run["rows"]
        md.append(f"| {run['name']} | {run['epochs']} | {rows[0]['eval_reward_mean']:.4f} -> "
                  f"{rows[-1]['eval_reward_mean']:.4f} | {secs(run['t_target'])} | "
                  f"{speedup(run['t_target'], ddpo['t_target'])} | {gain_secs(run['t_gain'])} | "
                  f"{speedup(run['t_gain'], ddpo['t_gain'])} | "
                  f"{'not reached' if run['q_target'] is None else format(run['q_target'], '.0f')} | "
                  f"{run['rollout_s_per_image']:.4f} | "
                  f"{ddpo['rollout_s_per_image'] / run['rollout_s_per_image']:.1f}x |")
    md += ["", f"![reward vs time and queries]({shown(png, results_path(False).parent)})", "",
           "Times are training seconds (sampling, rewards, gradient steps; evaluation excluded), interpolated "
           "between held-out evaluations, so the fast runs' resolution is their evaluation spacing. "
           f"Raw rows: `{shown(raw, ROOT)}`."]
    md = "\n".join(md)
    print("\n" + md)
    path = update_section(f"RLCM vs DDPO: {args.reward}", md, results_path(args.quick))
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
