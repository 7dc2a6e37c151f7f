"""Helpers (not fixtures: those live in `tests/conftest.py`) for the feedback and reward-model tests: renders,
filled stores, labelled pairs."""

from __future__ import annotations

import random

from rlcm.toy import world


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
