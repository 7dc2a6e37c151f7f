"""The exported reward model loads anywhere: portable backbone, any working directory, zip, Hub repo id, hf-hub: CLIP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import reward_model as rm
from feedback.raters import warm_colours
from reward_model.export import FILES
from rlcm.clip import load_clip
from tests.conftest import toy_clip_present
from tests.fixtures_rm import labelled_pairs, render
from tests.hub_fake import FakeHfApi, cache_repo

pytestmark = pytest.mark.skipif(not toy_clip_present(), reason="the shipped toy CLIP is not built")
IMAGES = [render(i) for i in range(900, 904)]
PROMPTS = ["a red circle", "a blue square", "a red circle", "a star"]


@pytest.fixture(scope="module")
def fitted():
    clip = load_clip("data/models/toy-clip")  # as the studio's settings name it: a path relative to the checkout
    pairs = labelled_pairs(warm_colours, 80, pool=60, seed=1)
    return rm.fit(pairs, clip, rm.FitConfig(ensemble_size=2, max_epochs=40, patience=10, image_features="embedding"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_backbone_is_recorded_by_name_and_loads_from_any_directory(fitted, tmp_path, monkeypatch):
    model, metrics = fitted
    d, z = rm.export(model, tmp_path / "rm", metrics)
    backbone = json.loads((d / "config.json").read_text())["backbone"]
    assert backbone["source"] == "toy-clip" and backbone["pretrained"] is None and len(backbone["fingerprint"]) == 16
    want = model.score(IMAGES, PROMPTS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # "data/models/toy-clip" means nothing here
    for path in (d, z):
        assert torch.equal(rm.load(path).score(IMAGES, PROMPTS), want)


def test_a_v1_export_with_a_relative_backbone_path_loads_elsewhere(fitted, tmp_path, monkeypatch):
    model, metrics = fitted
    d, _ = rm.export(model, tmp_path / "rm", metrics)
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"], cfg["backbone"]["source"] = 1, "data/models/toy-clip"
    cfg.pop("card")
    (d / "config.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    assert torch.equal(rm.load(d).score(IMAGES, PROMPTS), model.score(IMAGES, PROMPTS))


def test_backbone_override_and_unloadable_backbone(fitted, tmp_path):
    model, metrics = fitted
    d, _ = rm.export(model, tmp_path / "rm", metrics)
    copy = shutil.copytree("data/models/toy-clip", tmp_path / "my-copy-of-the-clip")
    assert torch.equal(rm.load(d, backbone=copy).score(IMAGES, PROMPTS), model.score(IMAGES, PROMPTS))
    cfg = json.loads((d / "config.json").read_text())
    cfg["backbone"]["source"] = "hf-hub:nobody/not-cached"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cannot load the backbone 'hf-hub:nobody/not-cached'"):
        rm.load(d)


def test_load_clip_hf_hub_from_the_local_cache(hub_cache):
    toy = load_clip("toy-clip")
    cache_repo(hub_cache, "someone/toy-clip", {
        "open_clip_config.json": json.dumps({"model_cfg": json.loads(open("data/models/toy-clip/toy-clip.json").read()),
                                             "preprocess_cfg": {}}).encode(),
        "open_clip_model.safetensors": Path("data/models/toy-clip/open_clip_model.safetensors")})
    hub = load_clip("hf-hub:someone/toy-clip")
    assert hub is not toy and hub.source == "hf-hub:someone/toy-clip" and "/" not in hub.name
    assert torch.equal(hub.embed_images(IMAGES), toy.embed_images(IMAGES))
    assert torch.equal(hub.embed_texts(PROMPTS), toy.embed_texts(PROMPTS))
    with pytest.raises(ValueError, match="cannot load hf-hub:someone/absent"):
        load_clip("hf-hub:someone/absent")


def test_a_model_on_an_hf_hub_backbone_loads_it_by_id_and_names_it_base_model(fitted, hub_cache, tmp_path):
    test_load_clip_hf_hub_from_the_local_cache(hub_cache)
    model, metrics = fitted
    d, _ = rm.export(model, tmp_path / "rm", metrics)
    cfg = json.loads((d / "config.json").read_text())
    cfg["backbone"]["source"] = "hf-hub:someone/toy-clip"  # same weights: the fingerprint still holds
    (d / "config.json").write_text(json.dumps(cfg))
    loaded = rm.load(d)
    assert loaded.clip.source == "hf-hub:someone/toy-clip"
    assert torch.equal(loaded.score(IMAGES, PROMPTS), model.score(IMAGES, PROMPTS))
    d2, _ = rm.export(loaded, tmp_path / "rm2")
    assert ModelCard.load(d2 / "README.md").data.base_model == "someone/toy-clip"


def test_card_carries_license_base_model_datasets_and_accuracy_with_interval(fitted, tmp_path):
    model, metrics = fitted
    shown = {**metrics, "accuracy": 0.55, "accuracy_n": 40, "n_test": 52, "accuracy_ci": [0.4, 0.69],
             "better_than_chance": False}  # 40 of 52 held-out pairs decided: the interval is over the 40
    d, _ = rm.export(model, tmp_path / "rm", shown,
                     card=rm.CardInfo(license="mit", datasets=["me/prefs"], base_model="me/clip"))
    card = ModelCard.load(d / "README.md")
    assert (card.data.license, card.data.base_model, card.data.datasets) == ("mit", "me/clip", ["me/prefs"])
    result = card.data.eval_results[0]
    assert result.metric_type == "accuracy" and result.metric_value == 0.55 and result.dataset_type == "me/prefs"
    assert "0.400–0.690" in result.metric_name and "n = 40" in result.metric_name
    assert "0.550 (95% Wilson interval 0.400–0.690, n = 40 held-out pairs" in card.text
    assert "not better than chance" in card.text.lower()
    again, _ = rm.export(rm.load(d), tmp_path / "again")  # the card's metadata survives a re-export
    assert ModelCard.load(again / "README.md").data.datasets == ["me/prefs"]
    old = {k: v for k, v in metrics.items() if k not in ("accuracy_ci", "better_than_chance", "accuracy_n",
                                                         "accuracy_method")}  # an export from before those fields
    d3, _ = rm.export(model, tmp_path / "old", {**old, "accuracy": 0.7, "n_test": 30})
    text = (d3 / "README.md").read_text()
    assert "0.700 (n = 30 held-out pairs)" in text and "chance" not in text.lower()
    assert ModelCard.load(d3 / "README.md").data.license == "unknown"


def test_push_then_load_by_repo_id_and_the_hub_mixin_keeps_the_same_files(fitted, hub_cache, tmp_path):
    model, metrics = fitted
    d, _ = rm.export(model, tmp_path / "rm", metrics)
    api = FakeHfApi(cache=hub_cache)
    rm.push_to_hub(d, "me/rm", api=api)
    assert api.repos["me/rm"]["repo_type"] == "model" and set(api.commits[-1].files) == set(FILES)
    want = model.score(IMAGES, PROMPTS)
    assert torch.equal(rm.load("me/rm").score(IMAGES, PROMPTS), want)
    assert torch.equal(rm.RewardModel.from_pretrained("me/rm").score(IMAGES, PROMPTS), want)
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in d.iterdir())
    for name in ("config.json", "README.md"):
        assert (saved / name).read_bytes() == (d / name).read_bytes(), name
    a, b = load_file(saved / "model.safetensors"), load_file(d / "model.safetensors")  # header order varies
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(rm.RewardModel.from_pretrained(saved).score(IMAGES, PROMPTS), want)
    with pytest.raises(ValueError, match="'me/absent' is no local directory or zip, and fetching it as a Hub repo"):
        rm.load("me/absent")
