"""The toy world: deterministic scenes, caption grammar, held-out split, and the exact checker."""

import numpy as np
import pytest

from rlcm.toy import world
from rlcm.toy.checker import check, fidelity


def test_rendering_is_deterministic_and_sized():
    a, b = world.render(world.sample_scene(7)), world.render(world.sample_scene(7))
    assert a.size == (64, 64) and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(world.render(world.sample_scene(8))))


def test_checker_scores_ground_truth_renders():
    scenes = [world.sample_scene(s) for s in range(400)]
    prompts = [world.caption(sc, drop=s % 2 == 0) for s, sc in enumerate(scenes)]
    res = fidelity([world.render(sc) for sc in scenes], prompts)
    assert res["score"] >= 0.99 and res["all_correct"] >= 0.98, res


def test_checker_rejects_wrong_attributes():
    sc = world.sample_scene(11, two_object_prob=0.0)
    o = sc.objects[0]
    other_bg = next(c for c in world.COLORS if c not in (sc.bg_color, o.color))
    other_shape = next(s for s in world.SHAPES if s != o.shape)
    img = world.render(sc)
    assert check(img, f"a {o.color} {o.shape} on a {sc.bg_color} background").all_correct
    r = check(img, f"a {o.color} {other_shape} on a {other_bg} background").results
    assert r == {"bg_color": False, "object0_color": True, "object0_shape": False}


def test_caption_grammar_round_trips_and_omits():
    sc = world.sample_scene(3)
    full = world.caption(sc, drop=False)
    req = world.parse(full)
    assert req.bg_color == sc.bg_color and req.objects[0]["shape"] == sc.objects[0].shape
    short = world.parse("a red circle")
    assert short.bg_color is None and short.objects[0]["size"] is None
    with pytest.raises(ValueError, match="unknown word"):
        world.parse("a red dragon on a blue background")


def test_held_out_combinations_never_appear_in_training():
    train = world.prompts("train", 300)
    held = world.prompts("heldout", 100)
    assert not set(train) & set(held)
    for p in held:
        o = world.parse(p).objects[0]
        assert world.is_held_out(o["color"], o["shape"], world.parse(p).bg_color)
    for s in range(300):
        sc = world.sample_scene(s, "train")
        assert not any(world.is_held_out(o.color, o.shape, sc.bg_color) for o in sc.objects)


def test_check_cli(tmp_path, capsys):
    from rlcm.toy.__main__ import main

    out = tmp_path / "s.png"
    assert main(["render", "--seed", "4", "--out", str(out)]) == 0
    cap = capsys.readouterr().out.strip()
    assert main(["check", "--image", str(out), "--prompt", cap]) == 0
    assert '"all_correct": true' in capsys.readouterr().out
    wrong = cap.replace("background", "backdrop")
    assert main(["check", "--image", str(tmp_path / "missing.png"), "--prompt", wrong]) == 2
