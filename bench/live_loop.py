"""The live loop end to end with a simulated rater: label N pairs, fit the reward model, RLCM for M minutes.

    python bench/live_loop.py --oracle feedback/raters.py:warm_colours --labels 300 --minutes 10 \
        --work-dir runs/live                                     # real run (~13 min), writes bench/RESULTS.md
    python bench/live_loop.py --oracle my_taste.py:prefer --labels 300 --minutes 10   # any rater file
    OMP_NUM_THREADS=1 python bench/live_loop.py --quick --oracle feedback/example_rater.py:prefer \
        --model /tmp/bt/models/toy-lcm --clip /tmp/bt/models/toy-clip   # seconds; throw-away RESULTS.md

Stages, each timed: (1) toy-LCM samples (4 steps, guidance 8) of the training prompts, 6 seeds each, into
a fresh feedback store; (2) the oracle (`prefer(image_a, image_b, prompt) -> "a" | "b" | "tie"`, any
`file.py:function`, `module:function` or shipped rater name) labels N pairs chosen by the store's
`next_pair` (feedback.simulate); (3) the reward model is fitted on them (toy CLIP backbone, default
FitConfig) and exported; (4) RLCM against it for M minutes of training time; (5) base and fine-tuned
samples of held-out prompts with the same seeds: the oracle's win rate of fine-tuned over base (ties count
half; sides alternate), the reward model's accuracy under the oracle on base pairs of those prompts, and
the toy checker's prompt fidelity of both. The LAST line printed is the JSON report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

import reward_model  # noqa: E402
from feedback import FeedbackStore, load_rater, simulate  # noqa: E402
from results import results_path, update_section  # noqa: E402
from rlcm.clip import load_clip  # noqa: E402
from rlcm.pipelines import load_pipeline  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from rlcm.toy.checker import fidelity  # noqa: E402
from rlcm.rewards import with_alignment_guard  # noqa: E402
from rlcm.trainer import RLCMConfig, RLCMTrainer  # noqa: E402

SEEDS_PER_PROMPT = 6  # C(6, 2) = 15 same-prompt pairs per prompt
WIN = {"a": 1.0, "b": 0.0, "tie": 0.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oracle", required=True, help="rater: file.py:function, module:function or a shipped name")
    ap.add_argument("--labels", type=int, default=300, help="pairs the oracle labels")
    ap.add_argument("--minutes", type=float, default=10.0, help="RLCM training time")
    ap.add_argument("--model", default="data/models/toy-lcm")
    ap.add_argument("--teacher", default="data/models/toy-teacher", help="unused here; accepted like every bench script")
    ap.add_argument("--clip", default="data/models/toy-clip", help="reward-model backbone")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=8.0)
    ap.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts, 2 seeds each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kl-coef", type=float, default=None, help="KL anchor to the base (default: RLCMConfig's)")
    ap.add_argument("--guard", type=float, default=0.0,
                    help="reward += GUARD x CLIP prompt score (x100): the studio's RLCM_ALIGNMENT_GUARD")
    ap.add_argument("--work-dir", default=None, help="keep the store, reward model and LoRA here (default: temp)")
    ap.add_argument("--quick", action="store_true", help="seconds: 24 labels, 3 s of RLCM; no bench/RESULTS.md")
    args = ap.parse_args()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    oracle = load_rater(args.oracle)
    labels = 24 if args.quick else args.labels
    budget = 3.0 if args.quick else 60 * args.minutes
    n_eval = 4 if args.quick else args.eval_prompts
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="live-loop-"))
    stages: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. samples of the training prompts (the trainer's own prompt pool: same n and seed)
    t = time.perf_counter()
    n_prompts = max(4, math.ceil(1.5 * labels / math.comb(SEEDS_PER_PROMPT, 2)))
    train_prompts = get_prompts("toy", "train", n_prompts, seed=args.seed)
    pipe = load_pipeline(args.model, device="cpu")
    store = FeedbackStore(work / "feedback")
    for p in train_prompts:
        gens = [torch.Generator().manual_seed(s) for s in range(SEEDS_PER_PROMPT)]
        with torch.no_grad():
            images = pipe([p] * SEEDS_PER_PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance,
                          generator=gens).images
        for s, im in enumerate(images):
            store.add_sample(im, p, seed=s, steps=args.steps, guidance=args.guidance, generator="base")
    stages["sample_s"] = time.perf_counter() - t
    print(f"1. {store.counts()['samples']} samples of {n_prompts} prompts in {stages['sample_s']:.1f}s", flush=True)

    # 2. the oracle labels pairs through the store
    t = time.perf_counter()
    answers = simulate(store, oracle, labels, "oracle", rng=args.seed)
    stages["label_s"] = time.perf_counter() - t
    print(f"2. labels {answers} in {stages['label_s']:.1f}s", flush=True)

    # 3. fit and export the reward model
    t = time.perf_counter()
    clip = load_clip(args.clip)
    rm, metrics = reward_model.fit(store, clip, reward_model.FitConfig(seed=args.seed))
    rm_dir, _ = reward_model.export(rm, work / "reward_model", metrics)
    stages["fit_s"] = time.perf_counter() - t
    print(f"3. reward model: held-out accuracy {metrics['accuracy']} on {metrics['n_test']} pairs, "
          f"{stages['fit_s']:.1f}s -> {rm_dir}", flush=True)

    # 4. RLCM against it; base samples first (the fresh LoRA's B is zero, so it is the base model)
    scorer = lambda images, prompts: rm.score(images, list(prompts)).detach().cpu().numpy().astype(np.float32)  # noqa: E731
    train_reward = with_alignment_guard(scorer, clip, args.guard)
    small = dict(prompts_per_epoch=2, images_per_prompt=2, sample_batch_size=4, train_batch_size=4) if args.quick else {}
    cfg = RLCMConfig(model=args.model, reward="preference", num_steps=args.steps, guidance_scale=args.guidance,
                     train_prompts=n_prompts, epochs=10**9, eval_every=0, checkpoint_every=10**9, seed=args.seed,
                     output_dir=str(work / "rlcm"), device="cpu", **small,
                     **({} if args.kl_coef is None else {"kl_coef": args.kl_coef}))
    trainer = RLCMTrainer(cfg, pipe=pipe, reward_fn=train_reward)
    assert trainer.train_prompts == train_prompts, "trainer prompt pool differs from the labelled prompts"
    eval_prompts = [p for p in get_prompts("toy", "heldout", n_eval, seed=args.seed + 1)[:n_eval] for _ in (0, 1)]
    eval_seeds = [20_000 + i for i in range(len(eval_prompts))]
    t = time.perf_counter()
    base = trainer.sample_images(eval_prompts, eval_seeds)
    stages["eval_s"] = time.perf_counter() - t
    stop = threading.Event()

    def on_event(e: dict) -> None:
        if e["type"] == "epoch":
            if e["time"] >= budget:
                stop.set()
            if e["epoch"] % 10 == 0 or stop.is_set():
                print(f"   epoch {e['epoch']}: {e['time']:.0f}s, train reward {e['reward_mean']:.3f}", flush=True)

    trainer.callbacks.append(on_event)
    t = time.perf_counter()
    trainer.train(stop=stop)
    stages["rlcm_wall_s"] = time.perf_counter() - t
    stages["rlcm_train_s"] = trainer.train_seconds
    print(f"4. RLCM: {trainer.epoch} epochs, {trainer.train_seconds:.0f}s of training", flush=True)

    # 5. fine-tuned vs base on held-out prompts, same seeds
    t = time.perf_counter()
    tuned = trainer.sample_images(eval_prompts, eval_seeds)
    wins = []
    for i, (b, f, p) in enumerate(zip(base, tuned, eval_prompts)):
        wins.append(WIN[oracle(f, b, p)] if i % 2 == 0 else 1.0 - WIN[oracle(b, f, p)])  # alternate sides
    pairs = [(base[i], base[i + 1], eval_prompts[i]) for i in range(0, len(base), 2)]
    truth = [oracle(a, b, p) for a, b, p in pairs]
    r = scorer([im for a, b, _ in pairs for im in (a, b)], [p for _, _, p in pairs for _ in (0, 1)])
    decided = [(c == "a") == (r[2 * i] > r[2 * i + 1]) for i, c in enumerate(truth) if c != "tie"]
    fid_base, fid_tuned = fidelity(base, eval_prompts)["score"], fidelity(tuned, eval_prompts)["score"]
    rm_before, rm_after = float(scorer(base, eval_prompts).mean()), float(scorer(tuned, eval_prompts).mean())
    stages["eval_s"] += time.perf_counter() - t
    stages["total_s"] = time.perf_counter() - t_all

    report = {
        "oracle": args.oracle, "labels": answers["recorded"], "answers": answers, "rlcm_minutes": budget / 60,
        "kl_coef": cfg.kl_coef, "guard": args.guard,
        "epochs": trainer.epoch,
        "rm_accuracy": metrics["accuracy"], "rm_accuracy_n": metrics["n_test"],
        "rm_accuracy_heldout_prompts": float(np.mean(decided)) if decided else None,
        "rm_accuracy_heldout_prompts_n": len(decided),
        "win_rate": float(np.mean(wins)), "win_rate_n": len(wins),
        "fidelity_before": fid_base, "fidelity_after": fid_tuned, "fidelity_change_points": 100 * (fid_tuned - fid_base),
        "rm_reward_before": rm_before, "rm_reward_after": rm_after,
        "stages_s": {k: round(v, 1) for k, v in stages.items()}, "work_dir": str(work), "reward_model": str(rm_dir),
    }
    report = {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    md = (f"Oracle `{args.oracle}`: {report['labels']} labels ({answers.get('a', 0)} a / {answers.get('b', 0)} b / "
          f"{answers.get('tie', 0)} tie) on toy-LCM samples ({args.steps} steps) of {n_prompts} training prompts; "
          f"reward model on the toy CLIP; RLCM {trainer.epoch} epochs in {budget / 60:g} min of training "
          f"(KL anchor {cfg.kl_coef:g}, alignment guard {args.guard:g}); "
          f"evaluation on {n_eval} held-out prompts x 2 seeds, same seeds before and after.\n\n"
          "| figure | value |\n|---|---|\n"
          f"| reward-model accuracy, its held-out pairs (n={metrics['n_test']}) | {fmt(metrics['accuracy'])} |\n"
          f"| reward-model accuracy, held-out prompts (n={len(decided)}, oracle ties excluded) | "
          f"{fmt(report['rm_accuracy_heldout_prompts'])} |\n"
          f"| oracle win rate, fine-tuned over base (n={len(wins)}, ties half) | {report['win_rate']:.3f} |\n"
          f"| prompt fidelity before -> after | {100 * fid_base:.1f} -> {100 * fid_tuned:.1f} "
          f"({report['fidelity_change_points']:+.1f} points) |\n"
          f"| reward-model score before -> after | {rm_before:.3f} -> {rm_after:.3f} |\n"
          + "".join(f"| {k.replace('_s', '')} (s) | {v:.1f} |\n" for k, v in report["stages_s"].items()))
    print("\n" + md)
    name = Path(args.oracle.split(":")[0]).stem + ":" + args.oracle.split(":")[-1] if ":" in args.oracle else args.oracle
    extra = "".join(f", {k} {v:g}" for k, v in (("guard", args.guard), ("KL", cfg.kl_coef)) if v)
    path = update_section(f"Live loop: {name}, {report['labels']} labels, {budget / 60:g} min{extra}", md,
                          results_path(args.quick))
    print(f"wrote {path}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
