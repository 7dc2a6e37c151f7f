"""Settings: every number finite and in range (edits, environment, saved file), and edits that outlive a restart."""

from __future__ import annotations

import json

import pytest

from studio.settings import EDITABLE, RANGES, StudioSettings, text_choices


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("RLCM_ADMIN_PASSWORD", "pw")
    monkeypatch.setenv("RLCM_DATA_DIR", str(tmp_path / "data"))
    for name in ("RLCM_GUIDANCE", "RLCM_STEPS", "RLCM_KL", "RLCM_MAX_UPLOAD_MB", "RLCM_KEEP_UNRATED"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


HOSTILE = [float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 2**64, -1, True, None, "abc", "nan", [], {}]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_every_numeric_setting_refuses_non_finite_and_out_of_range_values(name):
    s = StudioSettings()
    before = dict(vars(s))
    kind, lo, hi = RANGES[name]
    for bad in HOSTILE + [lo - 1, hi + 1] + ([lo + 0.5] if kind is int else []):
        if bad is None:
            continue
        setattr(s, name, bad)
        with pytest.raises(ValueError, match=name):
            s.validate()
        setattr(s, name, before[name])
    assert vars(s) == before
    for good in (lo, hi):  # both ends allowed ...
        setattr(s, name, good)
        if name in ("gate_min_votes", "gate_max_votes", "gate_max_decisive", "gate_confidence"):
            continue  # ... except where the gate rule adds its own cross-field limits
        s.validate()
        assert getattr(s, name) == good and type(getattr(s, name)) is kind


def test_update_is_all_or_nothing_and_says_what_is_wrong():
    s = StudioSettings()
    before = s.editable()
    for values, match in [({"guidance": 1e300}, "guidance must be a finite number in"),
                          ({"kl_coef": float("nan")}, "kl_coef"),
                          ({"alignment_guard": float("inf")}, "alignment_guard"),
                          ({"steps": 5, "guidance": "NaN"}, "guidance"),  # the valid one is not applied either
                          ({"steps": 4.5}, "whole number"),
                          ({"round_epochs": 10**12}, "round_epochs"),
                          ({"data_dir": "/etc"}, "not editable"),
                          ({"max_upload_mb": 10**6}, "not editable")]:
        with pytest.raises(ValueError, match=match):
            s.update(**values)
        assert s.editable() == before
    assert s.update(steps=6.0, guidance="7.5", kl_coef=0)["steps"] == 6
    assert (s.steps, s.guidance, s.kl_coef) == (6, 7.5, 0.0) and type(s.steps) is int


def test_edits_persist_across_a_restart(env, tmp_path):
    s = StudioSettings.from_env()
    s.update(steps=6, guidance=5.5, round_epochs=40, kl_coef=0.1)
    path = s.save()
    assert path == tmp_path / "data" / "settings.json"
    assert sorted(json.loads(path.read_text())["values"]) == sorted(EDITABLE)
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temporary left behind
    again = StudioSettings.from_env()
    assert (again.steps, again.guidance, again.round_epochs, again.kl_coef) == (6, 5.5, 40, 0.1)
    # the environment does not undo an admin's edit; an explicit override does
    env.setenv("RLCM_ROUND_EPOCHS", "12")
    assert StudioSettings.from_env().round_epochs == 40
    assert StudioSettings.from_env(round_epochs=3).round_epochs == 3


def test_a_tampered_settings_file_is_refused_and_set_aside(env, tmp_path):
    s = StudioSettings.from_env()
    s.save()
    doc = json.loads(s.settings_path.read_text())
    doc["values"]["guidance"] = 1e300
    s.settings_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="guidance"):
        StudioSettings(data_dir=s.data_dir).load_saved()
    again = StudioSettings.from_env()  # starts with the environment's values, and says so in one line
    assert again.guidance == StudioSettings.guidance
    assert not again.settings_path.exists() and again.settings_path.with_name("settings.json.invalid").exists()
    for text in ("{not json", json.dumps([1, 2]), json.dumps({"format": 1, "values": {"admin_password": "x"}})):
        again.settings_path.write_text(text)
        with pytest.raises(ValueError):
            StudioSettings(data_dir=again.data_dir).load_saved()


def test_environment_values_are_checked_with_the_variable_named(env):
    env.setenv("RLCM_GUIDANCE", "nan")
    with pytest.raises(ValueError, match="guidance"):
        StudioSettings.from_env()
    env.setenv("RLCM_GUIDANCE", "8")
    env.setenv("RLCM_STEPS", "four")
    with pytest.raises(ValueError, match="RLCM_STEPS"):
        StudioSettings.from_env()
    env.setenv("RLCM_STEPS", "4")
    env.setenv("RLCM_MAX_UPLOAD_MB", "0")
    with pytest.raises(ValueError, match="max_upload_mb"):
        StudioSettings.from_env()
    env.delenv("RLCM_MAX_UPLOAD_MB")
    s = StudioSettings.from_env()
    assert s.max_upload_mb == 100 and s.max_upload_bytes == 100 * 1024 * 1024
    env.setenv("RLCM_ROUND_EVAL_PROMPTS", "0")  # the keeper needs at least one prompt
    with pytest.raises(ValueError, match="round_eval_prompts"):
        StudioSettings.from_env()
    env.setenv("RLCM_ROUND_EVAL_PROMPTS", "64")
    assert StudioSettings.from_env().round_eval_prompts == 64
    env.setenv("RLCM_SWAP_GUARD", "-0.1")  # a negative weight would reward images that break the prompt
    with pytest.raises(ValueError, match="swap_guard"):
        StudioSettings.from_env()
    env.setenv("RLCM_SWAP_GUARD", "0.3")
    assert StudioSettings.from_env().swap_guard == 0.3


def test_a_rounds_batch_always_divides_its_epoch():
    """Every minibatch of a round is full (the trainer refuses a ragged one): the batch is the largest divisor
    of the epoch's images within the cap; 0 means the whole epoch on the shipped toy LCM and 16 elsewhere."""
    s = StudioSettings(round_prompts=5)  # 20 images an epoch
    assert s.round_batch_size == 20
    s.round_batch = 16
    assert s.round_batch_size == 10
    s.round_batch = 64
    assert s.round_batch_size == 20
    s.round_batch, s.round_prompts, s.model = 0, 16, "SimianLuo/LCM_Dreamshaper_v7"
    assert s.round_batch_size == 16
    s.round_prompts = 7  # 28 images: a real model's default cap of 16 gives 14
    assert s.round_batch_size == 14


@pytest.mark.parametrize("name", sorted(text_choices()))
def test_text_settings_with_fixed_values_refuse_others(name):
    s = StudioSettings()
    for good in text_choices()[name]:
        setattr(s, name, good)
        s.validate()
    setattr(s, name, "bogus")
    with pytest.raises(ValueError, match=f"{name} 'bogus'; valid: "):
        s.validate()
