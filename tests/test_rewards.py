"""Rewards: JPEG size both ways, the registry's errors, toy fidelity, CLIP alignment, the aesthetic head."""

import numpy as np
import pytest
import torch
from PIL import Image

from rlcm.rewards import AsyncReward, get_reward
from rlcm.toy import world


def flat_and_noisy():
    flat = Image.new("RGB", (64, 64), (0, 0, 255))
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return [flat, noisy]


def test_jpeg_rewards_are_opposite():
    imgs = flat_and_noisy()
    comp = get_reward("jpeg_compressibility")(imgs, ["", ""])
    incomp = get_reward("jpeg_incompressibility")(imgs, ["", ""])
    assert comp[0] > comp[1] and incomp[1] > incomp[0] and np.allclose(comp, -incomp)
    assert incomp[1] > 5  # kB: a noise image at quality 95 is large


def test_unknown_reward_lists_valid_names():
    with pytest.raises(ValueError, match="jpeg_compressibility"):
        get_reward("beauty")


def test_toy_fidelity_reward():
    sc = world.sample_scene(2, two_object_prob=0.0)
    r = get_reward("toy_fidelity")([world.render(sc), Image.new("RGB", (64, 64))], [world.caption(sc)] * 2)
    assert r[0] == 1.0 and r[1] < 1.0


def test_async_reward_matches_sync():
    fn = get_reward("jpeg_compressibility")
    ar = AsyncReward(fn)
    imgs = flat_and_noisy()
    assert np.array_equal(ar.submit(imgs, ["", ""]).result(), fn(imgs, ["", ""]))
    ar.close()


def test_aesthetic_needs_weights_and_says_so_offline(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        get_reward("aesthetic")
    with pytest.raises((RuntimeError, FileNotFoundError), match="(?i)offline|no such file"):
        get_reward("aesthetic", weights="camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth")


def test_aesthetic_head_on_a_local_clip(toy_clip_path, tmp_path):
    """The LAION head layout (linear chain, keys layers.N) on the toy CLIP's 64-d embeddings."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {"layers.0.weight": torch.randn(16, 64), "layers.0.bias": torch.zeros(16),
             "layers.2.weight": torch.randn(1, 16), "layers.2.bias": torch.zeros(1)}
    save_file(state, tmp_path / "head.safetensors")
    fn = get_reward("aesthetic", weights=str(tmp_path / "head.safetensors"), clip=str(toy_clip_path), pretrained=None)
    r = fn(flat_and_noisy(), ["", ""])
    assert r.shape == (2,) and np.isfinite(r).all() and r[0] != r[1]


def test_clip_alignment_prefers_matching_prompt(toy_clip_path):
    sc = world.sample_scene(9, two_object_prob=0.0)
    img = world.render(sc)
    other = next(c for c in world.COLORS if c not in (sc.bg_color, sc.objects[0].color))
    true = world.caption(sc, drop=False)
    r = get_reward("clip_alignment", clip=str(toy_clip_path))([img, img], [true, true.replace(
        f"{sc.bg_color} background", f"{other} background")])
    assert r[0] > r[1]


def test_weighted_sum_of_rewards():
    sc = world.sample_scene(3, two_object_prob=0.0)
    imgs, prompts = [world.render(sc), Image.new("RGB", (64, 64))], [world.caption(sc)] * 2
    jpeg, fid = get_reward("jpeg_compressibility")(imgs, prompts), get_reward("toy_fidelity")(imgs, prompts)
    both = get_reward("jpeg_compressibility + 2.5*toy_fidelity")(imgs, prompts)
    assert both.dtype == np.float32 and np.allclose(both, jpeg + 2.5 * fid, atol=1e-5)
    with pytest.raises(ValueError, match="bad weight"):
        get_reward("jpeg_compressibility+x*toy_fidelity")
    with pytest.raises(ValueError, match="unknown reward 'beauty'"):
        get_reward("jpeg_compressibility+beauty")


def test_alignment_guard_adds_the_clip_score(toy_clip_path):
    from rlcm.clip import load_clip
    from rlcm.rewards import with_alignment_guard

    sc = world.sample_scene(4, two_object_prob=0.0)
    imgs, prompts = [world.render(sc), Image.new("RGB", (64, 64))], [world.caption(sc)] * 2
    base = get_reward("jpeg_compressibility")
    clip = load_clip(toy_clip_path)
    guarded = with_alignment_guard(base, str(toy_clip_path), 0.5)(imgs, prompts)
    expected = base(imgs, prompts) + 0.5 * 100 * clip.score(imgs, prompts).numpy()
    assert np.allclose(guarded, expected, atol=1e-4)
    assert with_alignment_guard(base, clip, 0.0) is base


def test_a_relative_guard_is_scaled_to_the_rewards_within_pair_spread(toy_clip_path):
    """With rated pairs, the guard's weight makes its mean |difference| within a pair `weight` x the reward's:
    the round's per-prompt advantages see the two terms in that ratio, whatever the reward's own scale."""
    from rlcm.clip import load_clip
    from rlcm.rewards import with_alignment_guard

    clip = load_clip(toy_clip_path)
    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(int(s), two_object_prob=0.0) for s in rng.integers(0, 10**6, 8)]
    pairs = [(world.render(scenes[i]), world.render(scenes[i + 1]), world.caption(scenes[i])) for i in (0, 2, 4, 6)]
    images = [im for a, b, _ in pairs for im in (a, b)]
    prompts = [p for *_, p in pairs for _ in (0, 1)]
    clip_diff = np.abs(np.diff(100 * clip.score(images, prompts).numpy().reshape(-1, 2), axis=1)).mean()
    for scale in (0.01, 7.0):  # a small and a large reward scale get the same ratio
        reward = lambda ims, ps, scale=scale: scale * np.array([np.asarray(im, np.float32).mean() for im in ims])
        own_diff = np.abs(np.diff(reward(images, prompts).reshape(-1, 2), axis=1)).mean()
        guarded = with_alignment_guard(reward, clip, 0.25, pairs=pairs)
        assert np.isclose(guarded.guard_weight * clip_diff, 0.25 * own_diff, rtol=1e-4)
        total = guarded(images, prompts)
        assert np.allclose(total, reward(images, prompts) + guarded.guard_weight * 100 * clip.score(images, prompts).numpy(),
                           rtol=1e-4, atol=1e-4)


def test_prompt_variants_swap_one_attribute_word_at_a_time():
    from rlcm.rewards import prompt_variants

    groups = prompt_variants("an orange star on a plain black background")
    assert [len(g) for g in groups] == [7, 3, 7]  # object colour, shape, background colour: one group each
    assert "a red star on a plain black background" in groups[0]  # the article follows the new word
    assert "an orange star on a plain white background" in groups[2]
    assert all("orange" in v for v in groups[2]) and all("black" in v for v in groups[0])
    assert prompt_variants("a small dog") == [["a large dog"]] and prompt_variants("a dog") == []
    assert prompt_variants("An apple, red.")[0][:2] == ["An apple, orange.", "An apple, yellow."]  # only the word


def test_the_swap_hinge_penalises_only_an_image_a_swapped_prompt_fits_better(toy_clip_path):
    """A small object on a "small" prompt costs nothing; a large one is penalised, and the same large object
    costs nothing on a "large" prompt or one that names no size. With a weight, the guarded reward is the reward
    plus weight x the hinge."""
    from rlcm.clip import load_clip
    from rlcm.rewards import swap_hinge, with_alignment_guard

    clip = load_clip(toy_clip_path)
    imgs = [world.render(world.Scene((world.Obj("circle", "red", "small", side, 32.0, 32.0),), "blue", "plain", 0))
            for side in (16, 40)]
    hinge = swap_hinge(clip)
    small = hinge(imgs, ["a small red circle on a plain blue background"] * 2)
    assert small[0] == 0 and small[1] < -5
    assert (hinge(imgs[1:], ["a large red circle on a plain blue background"]) == 0).all()
    assert (hinge(imgs[1:], ["a red circle on a plain blue background"]) == 0).all()
    # the wrong colour is penalised: "red" fits better than the requested "orange", though the average swap doesn't
    assert hinge(imgs[:1], ["a small orange circle on a plain blue background"])[0] < -2
    reward = lambda ims, ps: np.ones(len(ims), np.float32)  # noqa: E731
    guarded = with_alignment_guard(reward, clip, 0.0, swap_weight=0.5)
    assert np.allclose(guarded(imgs, ["a small red circle on a plain blue background"] * 2), 1 + 0.5 * small, atol=1e-4)


def test_preference_takes_a_loaded_reward_function(clip, tmp_path):
    """`RewardModel.as_reward_fn()` plugs into `preference` (alone or in a sum); a path is refused with the recipe,
    and the CLI's `learned_reward` loads an exported model from its path."""
    import reward_model
    from feedback import RATERS
    from rlcm.__main__ import learned_reward
    from rlcm.trainer import RLCMConfig
    from tests.fixtures_rm import labelled_pairs

    pairs = labelled_pairs(RATERS["warm_colours"], 40, 24, seed=1)
    rm, metrics = reward_model.fit(pairs, clip, reward_model.FitConfig(ensemble_size=2))
    scenes = [world.sample_scene(100 + i) for i in range(3)]
    imgs, prompts = [world.render(s) for s in scenes], [world.caption(s) for s in scenes]
    fn = get_reward("preference", model=rm.as_reward_fn())
    r = fn(imgs, prompts)
    assert isinstance(r, np.ndarray) and r.dtype == np.float32 and r.shape == (3,)
    assert np.allclose(r, rm.score(imgs, prompts).numpy())
    with pytest.raises(ValueError, match="as_reward_fn"):
        get_reward("preference", model=str(tmp_path))
    with pytest.raises(ValueError, match="needs `model`"):
        get_reward("preference")
    rm_dir, _ = reward_model.export(rm, tmp_path / "rm", metrics)
    cfg = RLCMConfig(reward="preference+0.5*jpeg_compressibility", reward_kwargs={"model": str(rm_dir)})
    jpeg = get_reward("jpeg_compressibility")(imgs, prompts)
    assert np.allclose(learned_reward(cfg)(imgs, prompts), r + 0.5 * jpeg, atol=1e-4)
    assert learned_reward(RLCMConfig(reward="jpeg_compressibility")) is None
