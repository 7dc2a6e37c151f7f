"""Simulated raters: each taste prefers what it says, noise flips the stated fraction, loading by name/path/module."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from feedback import RATERS, FeedbackStore, load_rater, noisy, simulate
from feedback.raters import big_centred, follows_prompt, plain_background, warm_colours
from rlcm.toy import world
from tests.conftest import ROOT
from tests.fixtures_rm import fill_store


def _scene(bg=(0, 0, 255), box=(24, 24, 40, 40), fill=(255, 255, 0), noise=0.0, size=64, seed=0):
    arr = np.broadcast_to(np.array(bg, np.float32), (size, size, 3)).copy()
    arr += np.random.default_rng(seed).normal(0, noise, arr.shape)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    ImageDraw.Draw(im).rectangle(box, fill=fill)
    return im


def test_each_taste_prefers_what_it_says():
    red, blue = _scene(bg=(255, 0, 0)), _scene(bg=(0, 0, 255))
    assert warm_colours(red, blue, "") == "a" and warm_colours(blue, red, "") == "b"
    assert warm_colours(red, red.copy(), "") == "tie"
    big, small_corner = _scene(box=(16, 16, 47, 47)), _scene(box=(4, 4, 12, 12))
    assert big_centred(big, small_corner, "") == "a" and big_centred(small_corner, big, "") == "b"
    plain, grainy = _scene(), _scene(noise=20.0)
    assert plain_background(plain, grainy, "") == "a" and plain_background(grainy, plain, "") == "b"
    # pixels only: any size works, so they rate generated images too
    assert warm_colours(_scene(bg=(255, 0, 0), size=128), _scene(size=96), "") == "a"


def test_follows_prompt_uses_the_prompt_and_pixels():
    scene = world.sample_scene(3, two_object_prob=0.0)
    prompt = world.caption(scene, drop=False)
    other = next(s for s in (world.sample_scene(i, two_object_prob=0.0) for i in range(100, 200))
                 if s.objects[0].color != scene.objects[0].color and s.bg_color != scene.bg_color)
    assert follows_prompt(world.render(scene), world.render(other), prompt) == "a"
    assert follows_prompt(world.render(other), world.render(scene), prompt) == "b"


def test_noisy_flips_the_stated_fraction_deterministically():
    flaky = noisy(warm_colours, flip=0.3, seed=1)
    images = [world.render(world.sample_scene(i)) for i in range(120)]
    pairs = list(zip(images[::2], images[1::2]))
    clean = [warm_colours(a, b, "p") for a, b in pairs]
    noisy_answers = [flaky(a, b, "p") for a, b in pairs]
    assert noisy_answers == [flaky(a, b, "p") for a, b in pairs]  # deterministic given inputs
    decided = [(c, n) for c, n in zip(clean, noisy_answers) if c != "tie"]
    assert all(n == "tie" for c, n in zip(clean, noisy_answers) if c == "tie")
    flipped = np.mean([c != n for c, n in decided])
    assert 0.15 < flipped < 0.45
    assert noisy(warm_colours, flip=0.0)(*pairs[0], "p") == clean[0]
    assert [flaky.taste(a, b, "p") for a, b in pairs] == clean  # its noiseless taste, for benchmarks
    with pytest.raises(ValueError, match="flip"):
        noisy(warm_colours, flip=1.5)


def test_load_rater_by_name_path_and_module():
    assert load_rater("warm_colours") is warm_colours
    assert load_rater("feedback.raters:big_centred") is big_centred
    example = load_rater(f"{ROOT}/feedback/example_rater.py:prefer")
    assert example(Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black"), "") == "a"
    with pytest.raises(ValueError, match="valid: warm_colours"):
        load_rater("grumpy")
    with pytest.raises(ValueError, match="does not exist"):
        load_rater("nowhere/rater.py:prefer")
    with pytest.raises(ValueError, match="no callable"):
        load_rater("feedback.raters:nothing_here")
    assert set(RATERS) >= {"warm_colours", "big_centred", "plain_background", "noisy_warm_colours"}


def test_simulate_drives_the_store_until_pairs_run_out(tmp_path):
    with FeedbackStore(tmp_path / "fb") as store:
        fill_store(store, n_prompts=2, n_seeds=3)  # 2 x C(3, 2) = 6 pairs
        first = simulate(store, RATERS["noisy_plain_background"], 4, "sim")
        assert first["recorded"] == 4 and not first["exhausted"]
        rest = simulate(store, plain_background, 10, "sim")
        assert rest["recorded"] == 2 and rest["exhausted"]
        assert store.counts()["comparisons"] == 6 and store.rater_stats()[0]["rater"] == "sim"
