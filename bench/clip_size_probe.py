"""Does the toy CLIP's prompt score (the rounds' alignment guard) see the size a prompt asks for?

    python bench/clip_size_probe.py [N]

Base-model images of N held-out toy prompts that request a size ("small"/"large"); each image is scored against
its prompt and against the prompt with the size word swapped. Prints how often the own prompt scores higher, over
all images and split by the toy checker's verdict on the image's size. Then rendered toy scenes (40 random
objects, centred) at object sides 12-40 px on "small", "large" and size-less prompts: the guard's plain CLIP
score and the swap hinge (rlcm.rewards.swap_hinge), both x100, mean by side. A probe, not a studio benchmark.
"""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from rlcm.clip import load_clip  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from rlcm.rewards import swap_hinge  # noqa: E402
from rlcm.toy import world  # noqa: E402
from rlcm.toy.checker import check  # noqa: E402
from studio.serving import BASE, ServedGenerator  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 96
prompts = [p for p in get_prompts("toy", "heldout", 8 * n, seed=3) if " small " in p or " large " in p][:n]
images = ServedGenerator(StudioSettings(data_dir=Path(tempfile.mkdtemp()))).generate(
    prompts, list(range(len(prompts))), version=BASE)[0]
swapped = [p.replace(" small ", " \0 ").replace(" large ", " small ").replace(" \0 ", " large ") for p in prompts]
clip = load_clip("toy-clip")
margin = np.asarray(clip.score(images, prompts)) - np.asarray(clip.score(images, swapped))
right = np.array([check(im, p).results["object0_size"] for im, p in zip(images, prompts)])
print(f"{len(prompts)} images; the checker finds the requested size in {right.mean():.0%}")
print(f"own prompt above the size-swapped one: {(margin > 0).mean():.0%} (mean margin {margin.mean():.3f})")
for name, sel in (("right size", right), ("wrong size", ~right)):
    if sel.any():
        print(f"  {name} ({sel.sum()}): {(margin[sel] > 0).mean():.0%} (mean margin {margin[sel].mean():.3f})")

hinge, rng = swap_hinge(clip), np.random.default_rng(0)
sides = range(12, 44, 4)
print("rendered objects; plain CLIP score / swap hinge (x100) by object side, px:")
for word in ("small ", "large ", ""):
    rows = []
    for k in range(40):
        color, bg = rng.choice(list(world.COLORS), 2, replace=False)
        shape, style = rng.choice(world.SHAPES), rng.choice(world.STYLES)
        p = f"a {word}{color} {shape} on a {style} {bg} background"
        imgs = [world.render(world.Scene((world.Obj(shape, color, "small", side, 32.0, 32.0),), bg, style, k))
                for side in sides]
        rows.append([100 * np.asarray(clip.score(imgs, [p] * len(imgs))), hinge(imgs, [p] * len(imgs))])
    plain, hin = np.mean(rows, 0)
    print(f"  {word or 'no size '!s:7}" + " ".join(f"{s}:{a:.0f}/{b:.0f}" for s, a, b in zip(sides, plain, hin)))
