"""One round, outside the studio, with a fixed exported reward model: how the alignment guard's form, the
epochs and the step size move the oracle's win rate over the base and the toy prompt fidelity.

    python bench/round_probe.py RM_DIR rel 0.25 16            # guard relative to the reward model's spread
    python bench/round_probe.py RM_DIR abs 0.2 16 3e-3 8      # absolute weight; epochs, lr, prompts per epoch
    python bench/round_probe.py RM_DIR rel 0.25 24 3e-3 8 0.1  # ... and a KL anchor to the base (kl_coef)
    python bench/round_probe.py RM_DIR rel 0.25 24 3e-3 8 0.1 x0  # ... in x0 units (RLCMConfig.kl_units)
    python bench/round_probe.py RM_DIR rel 0.25 24 --at 6,12,18  # also measured after these epochs
    python bench/round_probe.py RM_DIR rel 0.25 16 --save-at 8,12  # LoRA also saved after these (round/lora-e8 ...)
    python bench/round_probe.py RM_DIR rel 0.25 12 --switch 3:RM_25,6:RM_40  # reward model refitted mid-round
    python bench/round_probe.py RM_DIR rel 0.25 12 --targets to_k,to_q,to_v,to_out.0,conv_out  # other LoRA modules
    python bench/round_probe.py RM_DIR rel 0.25 8 3e-3 16 --swap 0.1  # plus the swap hinge (rlcm.rewards.swap_hinge)
    python bench/round_probe.py RM_DIR rel 0.25 8 3e-3 16 --steps 2 --clip 0.2  # 2 optimiser steps per epoch, PPO clip
    python bench/round_probe.py RM_DIR rel 0.25 8 3e-3 16 --adv-scale batch  # advantages on the batch's scale
    python bench/round_probe.py RM_DIR rel 0.25 8 3e-3 16 --pool 256 --seed 2  # 256 distinct training prompts
        # (default 16); another seed: other training prompts and sampling noise (default 1)
    python bench/round_probe.py RM_DIR rel 0.25 8 3e-3 16 --init ADAPTER --warmup 4  # a chained round (also
        # measured before its first epoch: the earlier round's own win and fidelity on the same images)

RM_DIR is an exported reward model (a studio's data_dir/reward_models/<version>); the round is the studio's
round recipe (rlcm.trainer.RLCMTrainer, 4 images per prompt, one optimiser step per epoch unless --steps, no
evaluation; each epoch's reward, clip fraction and gradient norm go to stderr),
then 32 held-out prompts x 2 seeds are judged by the `warm_colours` rater, tuned against base (ties half),
and scored for prompt fidelity, which is also measured on the studio's confirmation set (studio.checks,
128 new prompts x 2 seeds). Prints one JSON line. A probe for choosing defaults, not a studio benchmark.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import reward_model  # noqa: E402
from feedback.raters import load_rater  # noqa: E402
from live_loop import oracle_wins  # noqa: E402 (beside this script)
from rlcm.prompts import get_prompts  # noqa: E402
from rlcm.rewards import with_alignment_guard  # noqa: E402
from rlcm.toy.checker import fidelity  # noqa: E402
from rlcm.trainer import RLCMConfig, RLCMTrainer  # noqa: E402
from studio import checks  # noqa: E402
from studio.serving import BASE, ServedGenerator  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402


def guard_pairs(gen: ServedGenerator) -> list:
    """Base samples to scale a relative alignment guard on: 8 training prompts x 4 pairs (the studio scales it on
    the last rated pairs, which a probe has none of)."""
    prompts = [p for p in get_prompts("toy", "train", 8, seed=0)[:8] for _ in range(8)]
    imgs = gen.generate(prompts, list(range(len(prompts))), version=BASE)[0]
    return [(imgs[i], imgs[i + 1], prompts[i]) for i in range(0, len(imgs), 2)]


def pop_option(name: str) -> str | None:
    """The value after `name` on the command line, removed with it (so the positional arguments stay in place)."""
    if name not in sys.argv:
        return None
    i = sys.argv.index(name)
    value = sys.argv[i + 1]
    del sys.argv[i:i + 2]
    return value


def main() -> None:
    at = pop_option("--at")  # epochs before the last at which the round is measured too (one JSON line each)
    at = [int(e) for e in at.split(",")] if at else []
    save_at = pop_option("--save-at")  # epochs after which the LoRA is saved too, for bench/eval_versions.py
    save_at = [int(e) for e in save_at.split(",")] if save_at else []
    switch = pop_option("--switch")  # after these epochs the round goes on with another reward model (a later refit)
    switch = {int(e): d for e, d in (item.split(":", 1) for item in switch.split(","))} if switch else {}
    targets = pop_option("--targets")  # the UNet modules the round's LoRA adapts (default: rlcm.lora.TARGETS)
    if targets:
        targets = targets.split(",")
        import rlcm.lora
        rlcm.lora.TARGETS = targets  # read when the trainer adds its LoRA
    init = pop_option("--init")  # an earlier round's served-adapter.safetensors to start from, as a chained round does
    warmup = int(pop_option("--warmup") or 0)  # learning-rate warm-up epochs (the studio's round_lr_warmup)
    opt_steps = int(pop_option("--steps") or 1)  # optimiser steps per epoch (RLCMConfig.optimizer_steps_per_epoch)
    clip = float(pop_option("--clip") or RLCMConfig.clip_range)  # PPO ratio clip (RLCMConfig.clip_range)
    swap = float(pop_option("--swap") or 0.0)  # weight of the swap hinge (rlcm.rewards.swap_hinge; absolute)
    pool = int(pop_option("--pool") or RLCMConfig.train_prompts)  # distinct training prompts (RLCMConfig.train_prompts)
    adv_scale = pop_option("--adv-scale") or RLCMConfig.adv_scale  # advantages scaled per prompt or per batch
    seed = int(pop_option("--seed") or 1)  # the round's seed: its training prompts and sampling noise
    rm_dir, mode, k, epochs = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    lr = float(sys.argv[5]) if len(sys.argv) > 5 else 3e-3
    per_epoch = int(sys.argv[6]) if len(sys.argv) > 6 else 8
    kl = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    kl_units = sys.argv[8] if len(sys.argv) > 8 else "action"
    oracle = load_rater(os.environ.get("PROBE_ORACLE", "warm_colours"))
    rm = reward_model.load(rm_dir)
    tag = "_switch" + "-".join(f"{e}" for e in sorted(switch)) if switch else ""
    tag += "_targets-" + "-".join(targets) if targets else ""
    tag += f"_swap{swap}" if swap else ""
    tag += f"_pool{pool}" if pool != RLCMConfig.train_prompts else ""
    tag += f"_seed{seed}" if seed != 1 else ""
    tag += f"_adv-{adv_scale}" if adv_scale != RLCMConfig.adv_scale else ""
    tag += f"_steps{opt_steps}_clip{clip}" if (opt_steps, clip) != (1, RLCMConfig.clip_range) else ""
    tag += f"_init-{Path(init).parent.parent.parent.name}-{Path(init).parent.name}_w{warmup}" if init else ""
    work = Path(f"runs/round_probe/{Path(rm_dir).name}_{mode}_{k}_{epochs}_{lr}_{per_epoch}_{kl}_{kl_units}{tag}")
    gen = ServedGenerator(StudioSettings(data_dir=work / "studio"))
    pairs = guard_pairs(gen) if mode == "rel" else None

    def guarded(rm):
        score = lambda im, p: rm.score(im, list(p)).cpu().numpy().astype(np.float32)  # noqa: E731
        return with_alignment_guard(score, rm.clip, k, pairs=pairs, swap_weight=swap)

    scorer = guarded(rm)
    cfg = RLCMConfig(model="toy-lcm", reward="preference", prompt_set="toy", num_steps=4, guidance_scale=8.0,
                     epochs=epochs, prompts_per_epoch=per_epoch, images_per_prompt=4, sample_batch_size=16,
                     train_batch_size=16, eval_every=0, output_dir=str(work / "round"), seed=seed,
                     checkpoint_every=10**6, lr=lr, kl_coef=kl, kl_units=kl_units, init_lora=init,
                     lr_warmup_epochs=warmup, optimizer_steps_per_epoch=opt_steps, clip_range=clip,
                     train_prompts=pool, adv_scale=adv_scale)
    prompts = [p for p in get_prompts("toy", "heldout", 32, seed=1)[:32] for _ in (0, 1)]
    seeds = [20_000 + i for i in range(len(prompts))]
    base = gen.generate(prompts, seeds, version=BASE)[0]
    cp, cs = checks.confirmation_set(128)
    base_confirm_images = gen.generate(cp, cs, version=BASE)[0]
    base_confirm = checks.image_fidelity(base_confirm_images, cp)
    base_attrs = fidelity(base_confirm_images, cp)
    t = time.time()

    def measure(trainer, epoch: int) -> None:
        tuned = trainer.sample_images(prompts, seeds)
        wins = oracle_wins(oracle, base, tuned, prompts)
        fb, ft = fidelity(base, prompts)["score"], fidelity(tuned, prompts)["score"]
        confirm_images = trainer.sample_images(cp, cs)
        confirmed = checks.fidelity_change(base_confirm, checks.image_fidelity(confirm_images, cp), cp)
        attrs = fidelity(confirm_images, cp)  # which requested attributes it lost (or gained), in points
        print(json.dumps({"reward_model": Path(rm_dir).name, "oracle": oracle.__name__, "guard": mode, "weight": k,
                          "swap_weight": swap, "guard_weight": round(float(getattr(scorer, "guard_weight", k)), 4),
                          "epochs": epoch,
                          "lr": lr, "prompts_per_epoch": per_epoch, "win": round(float(np.mean(wins)), 3),
                          "n": len(wins), "kl_coef": kl, "kl_units": kl_units,
                          "fidelity_change_points": round(100 * (ft - fb), 1),
                          "fidelity_confirmed_points": round(confirmed["change_points"], 1),
                          "fidelity_confirmed_se": round(confirmed["se_points"], 1),
                          "confirmed_by_attribute": {a: round(100 * (attrs[a] - base_attrs[a]), 1) for a in
                                                     sorted(base_attrs) if a not in ("score", "all_correct")},
                          "switch": {e: Path(d).name for e, d in sorted(switch.items())},
                          "lora_targets": targets or "default", "init": init, "warmup": warmup,
                          "optimizer_steps_per_epoch": opt_steps, "clip_range": clip,
                          "train_prompts": pool, "seed": seed, "adv_scale": adv_scale,
                          "train_s": round(time.time() - t)}), flush=True)

    trainer = RLCMTrainer(cfg, reward_fn=scorer)
    if init:
        measure(trainer, 0)
    trainer.callbacks.append(lambda e: measure(trainer, e["epoch"]) if e["type"] == "epoch" and e["epoch"] in at
                             and e["epoch"] < epochs else None)

    trainer.callbacks.append(lambda e: trainer.save_lora(work / "round" / f"lora-e{e['epoch']}")
                             if e["type"] == "epoch" and e["epoch"] in save_at else None)
    trainer.callbacks.append(lambda e: print(json.dumps({k: round(e[k], 5) for k in ("epoch", "reward_mean", "clipfrac",
                             "approx_kl", "grad_norm") if k in e}), file=sys.stderr) if e["type"] == "epoch" else None)
    trainer.callbacks.append(lambda e: trainer.set_reward_fn(guarded(reward_model.load(switch[e["epoch"]])))
                             if e["type"] == "epoch" and e["epoch"] in switch else None)
    trainer.train()
    measure(trainer, epochs)


if __name__ == "__main__":
    main()
