"""Inference speed and prompt fidelity: the toy LCM at 1, 2, 4, 8 steps against the teacher's 50 DDIM steps.

    python bench/inference.py                 # real run: 64 held-out prompts per row, writes bench/RESULTS.md
    OMP_NUM_THREADS=1 python bench/inference.py --quick --model /tmp/bt/models/toy-lcm \
        --teacher /tmp/bt/models/toy-teacher  # seconds; writes a throw-away RESULTS.md

For each sampler and batch size (1 and 16) it generates the same held-out prompts with the same per-image
seeds through the diffusers pipeline (what serving uses; 1 LCM step is fine there, only the RL policy
needs 2+), after one warm-up call, and reports images/s, seconds per call, and the toy checker's
prompt fidelity of exactly the timed images.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from results import results_path, update_section  # noqa: E402
from rlcm.pipelines import load_pipeline  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from rlcm.toy.checker import fidelity  # noqa: E402


def run(pipe, prompts: list[str], batch: int, **call) -> tuple[float, list]:
    """Seconds to generate `prompts` (image i with seed i) in calls of `batch`, and the images."""
    pipe([prompts[0]] * batch, generator=[torch.Generator().manual_seed(0)] * batch, **call)  # warm-up
    images, t0 = [], time.perf_counter()
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in range(i, min(i + batch, len(prompts)))]
        images += pipe(prompts[i:i + batch], generator=gens, **call).images
    return time.perf_counter() - t0, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/toy-lcm", help="LCM pipeline directory")
    ap.add_argument("--teacher", default="data/models/toy-teacher", help="DDIM teacher pipeline directory")
    ap.add_argument("--clip", default="data/models/toy-clip", help="unused here; accepted like every bench script")
    ap.add_argument("--images", type=int, default=64, help="held-out prompts (one image each) per row")
    ap.add_argument("--lcm-guidance", type=float, default=8.0)
    ap.add_argument("--teacher-guidance", type=float, default=5.0, help="classifier-free guidance scale")
    ap.add_argument("--teacher-steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM eta at inference (DDPO samples with 1)")
    ap.add_argument("--quick", action="store_true", help="8 images, teacher at 10 steps; no bench/RESULTS.md")
    args = ap.parse_args()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    n = 8 if args.quick else args.images
    teacher_steps = 10 if args.quick else args.teacher_steps
    prompts = get_prompts("toy", "heldout", n, seed=1)[:n]
    lcm, teacher = load_pipeline(args.model, device="cpu"), load_pipeline(args.teacher, device="cpu")
    rows = []
    samplers = [(f"LCM, {k} step{'s' * (k > 1)}", lcm, dict(num_inference_steps=k, guidance_scale=args.lcm_guidance))
                for k in (1, 2, 4, 8)]
    samplers.append((f"teacher, {teacher_steps} DDIM steps (CFG {args.teacher_guidance:g}, eta {args.eta:g})",
                     teacher, dict(num_inference_steps=teacher_steps, guidance_scale=args.teacher_guidance,
                                   eta=args.eta)))
    for batch in (1, 16):
        for name, pipe, call in samplers:
            seconds, images = run(pipe, prompts, batch, **call)
            fid = fidelity(images, prompts)
            rows.append(dict(sampler=name, batch=batch, ips=len(prompts) / seconds,
                             call_s=seconds / -(-len(prompts) // batch), img_ms=1000 * seconds / len(prompts),
                             score=fid["score"], all_correct=fid["all_correct"]))
            r = rows[-1]
            print(f"{name:48s} batch {batch:2d}: {r['ips']:7.1f} img/s, {r['call_s']:.3f} s/call, "
                  f"fidelity {r['score']:.3f}", flush=True)

    teacher_ips = {r["batch"]: r["ips"] for r in rows if r["sampler"].startswith("teacher")}
    md = [f"{len(prompts)} held-out toy prompts, image i with seed i, diffusers pipelines on the CPU "
          f"({torch.get_num_threads()} torch threads), one warm-up call per row. LCM guidance "
          f"{args.lcm_guidance:g} (w-embedding, one UNet pass per step); the teacher runs two passes per step (CFG). "
          "Fidelity: the toy checker's mean per-attribute accuracy of the timed images.", "",
          "| sampler | batch | images/s | s per call | ms per image | speed-up vs teacher | fidelity | all correct |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['sampler']} | {r['batch']} | {r['ips']:.1f} | {r['call_s']:.3f} | {r['img_ms']:.1f} | "
                  f"{r['ips'] / teacher_ips[r['batch']]:.1f}x | {100 * r['score']:.1f}% | {100 * r['all_correct']:.1f}% |")
    md = "\n".join(md)
    print("\n" + md)
    path = update_section("Inference: LCM steps vs the teacher's DDIM", md, results_path(args.quick))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
