"""The real LCM architecture (Dreamshaper-v7 / SD-1.5 layout, random weights) on a GPU, fp16.

    python bench/gpu_real_arch.py                  # on a CUDA machine (78 s on an H200), writes bench/RESULTS.md
    python bench/gpu_real_arch.py --quick          # fewer repeats; throw-away RESULTS.md
    python bench/gpu_real_arch.py --cpu-smoke      # no GPU: the same code on the tiny layout, to test the script

Without CUDA (and without --cpu-smoke) it says that no GPU is present and exits 0. Per resolution (512 and
768 px) a fresh `rlcm.arch.lcm_pipeline("full")` (860 M UNet, CLIP-L-sized text encoder, SD VAE) in fp16:
sampling latency at batch 1 for 2, 4 and 8 LCM steps (mean of --reps after a warm-up, VAE decode
included), then RLCM rounds with a LoRA (RLCMTrainer, jpeg_compressibility reward, 2 prompts x 4 images,
8 steps): the second round's time (the first warms up) and the peak GPU memory over both. Then the
fp16 log-prob check: one more round of trajectories sampled by the trained trainer, each action's log-prob
recomputed as its training pass recomputes it (`policy.log_prob` under the accelerator's autocast, train
mode), with no update in between, so every PPO ratio must be 1: the largest |recomputed - sampled|, on the
sampling batch and one sample at a time (training minibatches regroup rows), the share of ratios the PPO
clip (1e-4) would already clip, and how many log-probs or final latents are not finite.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from results import results_path, update_section  # noqa: E402


def logprob_check(trainer) -> dict:
    """Sample one round with `trainer` and recompute its log-probs as `RLCMTrainer._train_epoch` does."""
    trajs, _, _ = trainer._sample_epoch()
    trainer.unet.train()
    clip = trainer.cfg.clip_range
    res = {"batch": 0.0, "single": 0.0, "clipped": 0, "ratios": 0, "nonfinite": 0}
    for tr in trajs:
        res["nonfinite"] += int((~torch.isfinite(tr.log_probs)).sum()) + int((~torch.isfinite(tr.latents)).sum())
        n = len(tr.prompts)
        groups = {"batch": [torch.arange(n)], "single": [torch.tensor([i]) for i in range(n)]}
        for name, idxs in groups.items():
            for idx in idxs:
                for j in range(trainer.actions):
                    with torch.no_grad(), trainer.accelerator.autocast():
                        logp = trainer.policy.log_prob(trainer.unet, tr, j, idx)  # (b,) float32
                    diff = logp - tr.log_probs[idx, j].to(logp.device)
                    res["nonfinite"] += int((~torch.isfinite(logp)).sum())
                    # nan-propagating max: a non-finite difference must not read as agreement
                    res[name] = max(res[name], float(diff.abs().max()), key=lambda v: (math.isnan(v), v))
                    res["clipped"] += int(((torch.exp(diff) - 1).abs() > clip).sum())
                    res["ratios"] += diff.numel()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[512, 768])
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8], help="sampling steps to time")
    ap.add_argument("--round-steps", type=int, default=8, help="LCM steps of the RLCM round")
    ap.add_argument("--reps", type=int, default=5, help="timed sampling calls per setting")
    ap.add_argument("--model", default="data/models/toy-lcm", help="unused: the pipeline is built with random weights")
    ap.add_argument("--teacher", default="data/models/toy-teacher", help="unused; accepted like every bench script")
    ap.add_argument("--clip", default="data/models/toy-clip", help="unused; accepted like every bench script")
    ap.add_argument("--quick", action="store_true", help="2 repeats; no bench/RESULTS.md")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU needed: tiny layout at 64/96 px in fp32 on the CPU, to check the script runs")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("No GPU present (torch.cuda.is_available() is False): nothing measured. "
              "Run this on a CUDA machine, or pass --cpu-smoke to test the script on the tiny layout.")
        return
    from diffusers.utils import logging as diffusers_logging

    from rlcm.arch import lcm_pipeline
    from rlcm.rewards import get_reward
    from rlcm.trainer import RLCMConfig, RLCMTrainer

    diffusers_logging.disable_progress_bar()
    smoke = args.cpu_smoke
    device, dtype, size = ("cpu", torch.float32, "tiny") if smoke else ("cuda", torch.float16, "full")
    resolutions = [32, 48] if smoke else args.resolutions
    round_steps = 3 if smoke else args.round_steps
    reps = 2 if args.quick or smoke else args.reps
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    prompt = "a large red circle on a plain blue background"
    lat, rounds, checks = [], [], []
    for res in resolutions:
        pipe = lcm_pipeline(size).to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        for k in args.steps:
            call = dict(num_inference_steps=k, guidance_scale=8.0, height=res, width=res)
            pipe(prompt, generator=torch.Generator(device).manual_seed(0), **call)  # warm-up
            sync()
            t = time.perf_counter()
            for i in range(reps):
                pipe(prompt, generator=torch.Generator(device).manual_seed(i), **call)
            sync()
            lat.append((res, k, (time.perf_counter() - t) / reps))
            print(f"{res}px, {k} steps: {lat[-1][2]:.3f} s/image", flush=True)

        pipe.unet.register_to_config(sample_size=res // pipe.vae_scale_factor)  # the trainer samples at this size
        cfg = RLCMConfig(model=f"arch:{size}", num_steps=round_steps, prompts_per_epoch=2, images_per_prompt=4,
                         sample_batch_size=4, train_batch_size=4, epochs=2, eval_every=0, lora_rank=8, lora_alpha=8,
                         mixed_precision="no" if smoke else "fp16", device=device, train_prompts=8,
                         output_dir=tempfile.mkdtemp(prefix="gpu-arch-"))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = RLCMTrainer(cfg, pipe=pipe, reward_fn=get_reward("jpeg_compressibility"))
        hist = trainer.train()
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        rounds.append((res, hist[-1]["time"] - hist[-2]["time"], hist[0]["time"], peak))
        print(f"{res}px RLCM round: {rounds[-1][1]:.2f}s (first {rounds[-1][2]:.2f}s), peak {peak:.1f} GiB", flush=True)
        lp = logprob_check(trainer)
        checks.append((res, lp))
        print(f"{res}px log-probs recomputed: max |diff| batch {lp['batch']:.3g}, one by one {lp['single']:.3g}; "
              f"{lp['clipped']}/{lp['ratios']} ratios outside 1 +- {cfg.clip_range:g}; {lp['nonfinite']} non-finite",
              flush=True)
        del trainer, pipe
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU smoke test (tiny layout, fp32)"
    md = [f"`rlcm.arch.lcm_pipeline(\"{size}\")`, random weights, {str(dtype).split('.')[-1]} on {gpu}; "
          f"batch 1, guidance 8, VAE decode included, mean of {reps} calls after a warm-up.", "",
          "| resolution | " + " | ".join(f"{k} steps (s)" for k in args.steps) + " |",
          "|---|" + "---|" * len(args.steps)]
    for res in resolutions:
        md.append(f"| {res} px | " + " | ".join(f"{s:.3f}" for r, _, s in lat if r == res) + " |")
    md += ["", f"RLCM optimisation round with LoRA (rank 8, fp32 adapter weights, mixed precision "
           f"{'no' if smoke else 'fp16'}): 2 prompts x 4 images, {round_steps} steps ({round_steps - 1} actions each), "
           "jpeg_compressibility, one optimiser step; time of the second round (the first includes warm-up).", "",
           "| resolution | round (s) | first round (s) | peak GPU memory (GiB) |", "|---|---|---|---|"]
    md += [f"| {res} px | {t:.2f} | {t0:.2f} | {peak:.1f} |".replace("nan", "–") for res, t, t0, peak in rounds]
    md += ["", f"Log-probs ({'fp32' if smoke else 'fp16 UNet, fp16 mixed precision'}): one more round "
           f"(8 trajectories, {round_steps - 1} actions) sampled by the trainer after its rounds, each action's log-prob "
           "recomputed as the training pass does (`policy.log_prob` under the accelerator's autocast) with no update "
           "in between: every PPO ratio should be exactly 1. Recomputed on the sampling batch (4) and one sample at "
           "a time; clipped: recomputed ratios (both ways) the PPO clip (1e-4) would already clip; non-finite: "
           "log-probs and final latents.",
           "", "| resolution | max \\|Δ log-prob\\| batch | max \\|Δ log-prob\\| one at a time | clipped | non-finite |",
           "|---|---|---|---|---|"]
    md += [f"| {res} px | {lp['batch']:.2e} | {lp['single']:.2e} | {lp['clipped']}/{lp['ratios']} | {lp['nonfinite']} |"
           for res, lp in checks]
    md = "\n".join(md)
    print("\n" + md)
    path = update_section(f"Real architecture on a GPU: {gpu}", md, results_path(args.quick or smoke))  # one per card
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
