"""PerPromptStatTracker: each prompt normalised by its own recent rewards, batch statistics until it has enough."""

import numpy as np

from rlcm.stats import PerPromptStatTracker


def standardise(x, ref):
    ref = np.asarray(ref, np.float64)
    return (np.asarray(x, np.float64) - ref.mean()) / (ref.std() + 1e-6)


def test_each_prompt_is_normalised_by_its_own_rewards():
    tracker = PerPromptStatTracker(buffer_size=32, min_count=3)
    prompts = ["cat", "dog", "cat", "dog", "cat", "dog"]
    rewards = np.array([1.0, 100.0, 2.0, 130.0, 4.0, 160.0])
    adv = tracker.update(prompts, rewards)
    cat, dog = rewards[0::2], rewards[1::2]
    assert np.allclose(adv[0::2], standardise(cat, cat)) and np.allclose(adv[1::2], standardise(dog, dog))
    for a in (adv[0::2], adv[1::2]):  # within a prompt: zero mean, unit spread, higher reward -> higher advantage
        assert abs(a.mean()) < 1e-9 and abs(a.std() - 1) < 1e-5 and np.all(np.diff(a) > 0)
    assert adv[0] < 0 < adv[4] and adv[1] < 0 < adv[5]  # the sign: above the prompt's mean is positive


def test_buffers_accumulate_across_rounds_and_forget_the_oldest():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=2)
    tracker.update(["a", "a"], np.array([0.0, 10.0]))
    adv = tracker.update(["a", "a"], np.array([4.0, 6.0]))
    assert np.allclose(adv, standardise([4.0, 6.0], [0.0, 10.0, 4.0, 6.0]))  # round 1 still counts
    adv = tracker.update(["a", "a"], np.array([5.0, 7.0]))
    assert np.allclose(adv, standardise([5.0, 7.0], [4.0, 6.0, 5.0, 7.0]))  # the buffer holds the last 4
    assert tracker.state_dict() == {"a": [4.0, 6.0, 5.0, 7.0]}


def test_below_min_count_the_batch_statistics_are_used():
    tracker = PerPromptStatTracker(buffer_size=32, min_count=3)
    prompts = ["a", "a", "b", "b"]
    rewards = np.array([1.0, 3.0, 10.0, 30.0])
    adv = tracker.update(prompts, rewards)
    assert np.allclose(adv, standardise(rewards, rewards))  # 2 < min_count: the whole batch
    adv = tracker.update(["a"], np.array([2.0]))  # now 3 rewards buffered for "a"
    assert np.allclose(adv, standardise([2.0], [1.0, 3.0, 2.0]))


def test_state_round_trips_and_keeps_the_buffer_size():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=1)
    tracker.update(["x", "y", "x"], np.array([1.0, 2.0, 3.0]))
    other = PerPromptStatTracker(buffer_size=3, min_count=1)
    other.load_state_dict(tracker.state_dict())
    new = np.array([5.0, 0.5])
    assert np.array_equal(other.update(["x", "y"], new), tracker.update(["x", "y"], new))
    other.update(["x"] * 5, np.arange(5.0))
    assert len(other.state_dict()["x"]) == 3


def test_batch_scale_centres_per_prompt_and_weighs_prompts_by_their_spread():
    prompts = ["flat", "flat", "flat", "flat", "wide", "wide", "wide", "wide"]
    rewards = np.array([0.0, 0.001, 0.002, 0.003, 1.0, 2.0, 3.0, 4.0])  # "flat": images the reward barely tells apart
    adv = PerPromptStatTracker(buffer_size=32, min_count=4, scale="batch").update(prompts, rewards)
    centred = np.concatenate([rewards[:4] - rewards[:4].mean(), rewards[4:] - rewards[4:].mean()])
    assert np.allclose(adv, centred / np.sqrt(np.mean(centred ** 2)))  # one scale for the batch, unit RMS
    assert abs(adv[:4].mean()) < 1e-9 and abs(adv[4:].mean()) < 1e-9  # each prompt still centred on its own mean
    assert np.all(np.diff(adv[:4]) > 0) and np.all(np.diff(adv[4:]) > 0) and adv[4] < 0 < adv[7]
    assert np.abs(adv[:4]).max() < 0.01 * np.abs(adv[4:]).min()  # the flat prompt hardly pushes
    per_prompt = PerPromptStatTracker(buffer_size=32, min_count=4).update(prompts, rewards)
    assert np.allclose(np.abs(per_prompt[:4]), np.abs(per_prompt[4:]), rtol=0.01)  # per-prompt scaling: the same size


def test_an_unknown_scale_is_refused():
    import pytest

    with pytest.raises(ValueError, match="scale"):
        PerPromptStatTracker(scale="global")
