"""Does the toy CLIP's prompt score (the rounds' alignment guard) see the size a prompt asks for?

    python bench/clip_size_probe.py [N]

Base-model images of N held-out toy prompts that request a size ("small"/"large"); each image is scored against
its prompt and against the prompt with the size word swapped. Prints how often the own prompt scores higher, over
all images and split by the toy checker's verdict on the image's size. A probe, not a studio benchmark.
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
