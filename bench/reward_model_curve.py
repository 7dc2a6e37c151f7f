"""Held-out accuracy of the reward model versus number of labels, per shipped simulated rater; and fit time.

    python bench/reward_model_curve.py            # full run (minutes of CPU): 50..500 labels per rater
    python bench/reward_model_curve.py --quick    # seconds: 2 raters, small pool, 50/100 labels
    python bench/reward_model_curve.py --image-features embedding+tower --hidden 64 --no-record  # a variant

Images: toy-LCM samples (4 steps, guidance 8) from `data/models/toy-lcm` when it exists, otherwise
ground-truth renders of scenes consistent with each prompt (it prints which). Every rater labels every
pair of same-prompt samples through the feedback store (next_pair -> prefer -> record_comparison).
Evaluation pairs come from prompts never used for fitting. Prints a markdown table: accuracy over the decided
held-out pairs with its 95% Wilson interval (ties left out; see reward_model.metrics).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from feedback import RATERS, FeedbackStore, simulate  # noqa: E402
from rlcm.toy import world  # noqa: E402

import reward_model as rm  # noqa: E402
from reward_model.embeddings import IMAGE_FEATURES  # noqa: E402
from reward_model.metrics import format_accuracy  # noqa: E402


BASELINE = "image features embedding+tower, MLP heads of width 64"  # the default until the perceptual features


def render_for_prompt(prompt: str, seed: int):
    """A render of a random scene showing what `prompt` asks for (unspecified attributes drawn at random)."""
    req, rng = world.parse(prompt), random.Random(seed)
    colors = list(world.COLORS)
    named = {o["color"] for o in req.objects if o["color"]}
    bg = req.bg_color or rng.choice([c for c in colors if c not in named])
    taken, objs, used = [], [], {bg} | named
    for o in req.objects:
        color = o["color"] or rng.choice([c for c in colors if c not in used])
        used.add(color)
        size = "small" if len(req.objects) > 1 else (o["size"] or rng.choice(list(world.SIZES)))
        side = rng.randint(*world.SIZES[size])
        cx, cy = world._place(rng, side, taken) or (world.SIZE / 2, world.SIZE / 2)
        taken.append((cx, cy, side))
        objs.append(world.Obj(o["shape"], color, size, side, cx, cy))
    return world.render(world.Scene(tuple(objs), bg, req.bg_style or rng.choice(world.STYLES), seed))


def make_samples(store: FeedbackStore, prompts: list[str], seeds: int, lcm_path: Path) -> str:
    if (lcm_path / "model_index.json").exists():
        from diffusers import LatentConsistencyModelPipeline

        pipe = LatentConsistencyModelPipeline.from_pretrained(lcm_path, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        for prompt in prompts:
            gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
            with torch.no_grad():
                images = pipe([prompt] * seeds, num_inference_steps=4, guidance_scale=8.0, generator=gens).images
            for s, im in enumerate(images):
                store.add_sample(im, prompt, seed=s, steps=4, guidance=8.0, generator="toy-lcm")
        return f"toy-LCM samples from {lcm_path} (4 steps, guidance 8)"
    for p, prompt in enumerate(prompts):
        for s in range(seeds):
            store.add_sample(render_for_prompt(prompt, 1000 * p + s), prompt, seed=s, steps=0, guidance=0.0,
                             generator="render")
    return f"ground-truth renders ({lcm_path} not found)"


def pairs_of(store: FeedbackStore, rows: list[dict]) -> list[dict]:
    return [{"image_a": store.load_image(r["sample_a"]), "image_b": store.load_image(r["sample_b"]),
             "prompt": r["prompt"], "choice": r["choice"], "rater": r["rater"]} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run: 2 raters, 12 prompts x 6 seeds, 50/100 labels")
    ap.add_argument("--clip", default="data/models/toy-clip", help="CLIP directory or open_clip name")
    ap.add_argument("--lcm", default="data/models/toy-lcm", type=Path)
    ap.add_argument("--raters", nargs="*", default=None, help=f"default: all of {', '.join(RATERS)}")
    ap.add_argument("--image-features", default=rm.FitConfig.image_features, choices=IMAGE_FEATURES)
    ap.add_argument("--hidden", type=int, default=rm.FitConfig.hidden, help="head width; 0: linear heads (default)")
    ap.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md alone")
    ap.add_argument("--baseline", action="store_true",
                    help=f"also fit the earlier default ({BASELINE}) at 100 labels, for comparison")
    ap.add_argument("--data-dir", default=None, help="keep the store and embedding cache here (default: temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    sizes = (50, 100) if quick else (50, 100, 200, 300, 500)
    n_train_prompts, n_eval_prompts, seeds = (8, 4, 6) if quick else (24, 12, 8)  # C(8,2) = 28 pairs per prompt
    raters = args.raters or (["warm_colours", "plain_background"] if quick else list(RATERS))

    clip_note = args.clip
    if not Path(args.clip).is_dir() and "/" in args.clip:
        if not quick:
            sys.exit(f"{args.clip} not found; build it (python -m rlcm.toy.build) or pass --clip")
        from rlcm.toy.models import random_clip

        args.clip = str(random_clip(tempfile.mkdtemp()))
        clip_note = "random-weight toy CLIP (data/models/toy-clip not built yet)"
    from rlcm.clip import load_clip

    clip = load_clip(args.clip)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="rm-curve-"))
    prompts = world.prompts("train", n_train_prompts + n_eval_prompts, seed=11)
    eval_prompts = set(prompts[n_train_prompts:])
    store = FeedbackStore(data_dir)
    t = time.perf_counter()
    source = make_samples(store, prompts, seeds, args.lcm)
    print(f"images: {source}; {store.counts()['samples']} samples in {time.perf_counter() - t:.1f}s", flush=True)
    print(f"backbone: {clip_note}", flush=True)
    cache = rm.EmbeddingCache(clip, data_dir, args.image_features)

    rows, fit_time = [], None
    for name in raters:
        t = time.perf_counter()
        simulate(store, RATERS[name], 10**6, name, rng=0)  # every same-prompt pair
        labelled = [r for r in store.comparisons() if r["rater"] == name]
        train = pairs_of(store, [r for r in labelled if r["prompt"] not in eval_prompts])
        held = pairs_of(store, [r for r in labelled if r["prompt"] in eval_prompts])
        fit_cfg = rm.FitConfig(image_features=args.image_features, hidden=args.hidden)
        curve = rm.accuracy_curve(train, clip, sizes, config=fit_cfg, eval_pairs=held, cache=cache)
        if args.baseline:
            base_cfg = rm.FitConfig(image_features="embedding+tower", hidden=64)
            base_cache = rm.EmbeddingCache(clip, data_dir, base_cfg.image_features)
            curve.append(rm.accuracy_curve(train, clip, (100,), config=base_cfg, eval_pairs=held, cache=base_cache)[0])
        rows.append((name, curve))
        print(f"{name}: {len(labelled)} labels in {time.perf_counter() - t:.1f}s; "
              + "; ".join(f"{c['n_labels']}: {format_accuracy(c)}" for c in curve), flush=True)
        if fit_time is None:  # time a whole fit on up to 1,000 pairs, embeddings already cached
            everything = pairs_of(store, labelled[:1000])
            rm.fit(everything[:20], clip, fit_cfg, cache=cache)  # warm-up
            t = time.perf_counter()
            _, m = rm.fit(everything, clip, fit_cfg, cache=cache)
            fit_time = (len(everything), time.perf_counter() - t, m)

    head = "linear heads, prior chosen by prompt-grouped cross-validation" if args.hidden == 0 else \
        f"MLP heads of width {args.hidden}"
    lines = [f"Images: {source}. Backbone: {clip_note}. Held-out pairs: all same-prompt pairs of "
             f"{n_eval_prompts} prompts never used for fitting, labelled by the same rater; accuracy is over the "
             "pairs it did not call a tie (its n), with the 95% Wilson interval; the fit uses every label given "
             f"(ties as 1/2). Image features `{args.image_features}`, {head}; otherwise the default FitConfig.", "",
             "| rater | " + " | ".join(f"{n} labels" for n in sizes)
             + (" | 100 labels, earlier default" if args.baseline else "") + " | held-out pairs: decided (ties) |",
             "|---|" + "---|" * (len(sizes) + 1 + args.baseline)]
    for name, curve in rows:
        cells = [f"{c['accuracy']:.3f} ({c['accuracy_ci'][0]:.2f}–{c['accuracy_ci'][1]:.2f})"
                 if c["accuracy"] is not None else "–" for c in curve]
        done = next((c for c in curve if c["accuracy"] is not None), {"accuracy_n": 0, "n_test_ties": 0})
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {done['accuracy_n']} ({done['n_test_ties']}) |")
    lines += ["", "Not better than chance (95% interval reaches 0.5 or below): "
              + (", ".join(f"{name} at {c['n_labels']}" + (" (earlier default)" if i >= len(sizes) else "")
                           for name, curve in rows for i, c in enumerate(curve)
                           if c["accuracy"] is not None and not c["better_than_chance"]) or "none") + "."]
    if args.baseline:
        lines += ["", f"Earlier default: {BASELINE}. Earlier versions of this section measured it (one figure per "
                  "cell, no interval); its column here is a rerun on the same labels and held-out pairs and "
                  "supersedes them."]
    n, seconds, m = fit_time
    lines += ["", f"Fit on {n} pairs with embeddings cached: {seconds:.2f}s "
              f"(head training {m['fit_seconds']:.2f}s, {torch.get_num_threads()} thread(s)); "
              f"its own held-out accuracy {format_accuracy(m)}."]
    md = "\n".join(lines)
    print("\n" + md)
    if args.no_record:
        return
    from results import results_path, update_section

    update_section("Reward model: held-out accuracy versus labels", md, path=results_path(args.quick))

if __name__ == "__main__":
    main()
