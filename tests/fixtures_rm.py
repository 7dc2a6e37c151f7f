"""Fixtures for the feedback and reward-model tests: a CLIP (the shipped toy one, else random weights) and stores.

Import the fixtures you use into a test module: `from tests.fixtures_rm import clip, clip_dir, ...`.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rlcm.toy import world

ROOT = Path(__file__).resolve().parent.parent
TOY_CLIP = ROOT / "data" / "models" / "toy-clip"


def toy_clip_present() -> bool:
    return (TOY_CLIP / "open_clip_model.safetensors").is_file() and any(TOY_CLIP.glob("*.json"))


def make_random_clip(directory: Path, seed: int = 0) -> Path:
    """A random-weight toy CLIP saved as an open_clip model directory (what `load_clip(dir)` reads)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from rlcm.toy.models import register_clip_config

    name = register_clip_config(directory)
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors")
    return directory


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """`data/models/toy-clip` when built, otherwise a random-weight CLIP of the same architecture."""
    if toy_clip_present():
        return TOY_CLIP
    return make_random_clip(tmp_path_factory.mktemp("random-toy-clip"))


@pytest.fixture(scope="session")
def clip(clip_dir):
    from rlcm.clip import load_clip

    return load_clip(clip_dir)


def render(seed: int):
    return world.render(world.sample_scene(seed))


def fill_store(store, n_prompts: int = 3, n_seeds: int = 4, generators=("base",), seed0: int = 0) -> list[str]:
    """Add `n_prompts` x `n_seeds` renders per generator (prompt labels are arbitrary); returns the prompts."""
    prompts = world.prompts("train", n_prompts, seed=7)
    for g, gen in enumerate(generators):
        for p, prompt in enumerate(prompts):
            for s in range(n_seeds):
                store.add_sample(render(seed0 + 10_000 * g + 100 * p + s), prompt, seed=s, steps=4, guidance=8.0,
                                 generator=gen)
    return prompts


def labelled_pairs(rater, n_pairs: int, pool: int, seed: int) -> list[dict]:
    """`n_pairs` distinct pairs over `pool` random renders, labelled by `rater` (prompt: caption of the left scene)."""
    scenes = [world.sample_scene(seed * 1_000_000 + i) for i in range(pool)]
    images = [world.render(s) for s in scenes]
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n_pairs:
        i, j = rng.sample(range(pool), 2)
        if (min(i, j), max(i, j)) in seen:
            continue
        seen.add((min(i, j), max(i, j)))
        prompt = world.caption(scenes[i])
        out.append({"image_a": images[i], "image_b": images[j], "prompt": prompt,
                    "choice": rater(images[i], images[j], prompt), "rater": "sim"})
    return out
