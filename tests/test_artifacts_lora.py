"""A round's LoRA exported for diffusers: the folder loads with `pipe.load_lora_weights(dir)` alone, changes the
images, and reproduces the project's own LoRA-applied images (with lora_alpha != r, so the scale must survive)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from rlcm.lora_export import WEIGHTS, LoraCard, export_lora

PROMPTS = ["a red circle on a blue background"]


def _images(pipe, seed=3):
    g = torch.Generator().manual_seed(seed)
    return pipe(PROMPTS, num_inference_steps=2, guidance_scale=8.0, generator=g, output_type="np").images


@pytest.fixture(scope="module")
def round_dir(tmp_path_factory, toy_lcm_path):
    """A studio round directory whose `lora/` the project saved, and the images the project makes with it."""
    from rlcm.lora import add_lora, save_lora
    from rlcm.pipelines import load_pipeline

    pipe = load_pipeline(str(toy_lcm_path), device="cpu")
    cfg = add_lora(pipe.unet, rank=4, alpha=8)  # alpha != r: loading without the metadata would halve the effect
    torch.manual_seed(0)
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:  # a fresh LoRA is a no-op (B = 0): give it an effect, as training would
            p.data.normal_(0, 0.05)
    d = tmp_path_factory.mktemp("round") / "7"
    save_lora(type(pipe), pipe.unet, cfg, d / "lora")
    return d, _images(pipe)


def test_export_loads_with_diffusers_alone_and_matches_the_projects_images(round_dir, toy_lcm_path, tmp_path):
    d, project_images = round_dir
    out = export_lora(d, tmp_path / "export", LoraCard(base_model=str(toy_lcm_path), reward="a test reward",
                                                        rounds=[5, 7], steps=4, guidance=8.0))
    assert sorted(p.name for p in out.iterdir()) == ["README.md", WEIGHTS]

    # only diffusers from here on, as a user of the folder would
    from diffusers import LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline.from_pretrained(str(toy_lcm_path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    base = _images(pipe)
    pipe.load_lora_weights(str(out))
    tuned = _images(pipe)
    assert np.abs(tuned - base).mean() > 0.01  # the adapter changes the images
    np.testing.assert_allclose(tuned, project_images, atol=1e-4)


def test_card_names_base_reward_rounds_and_win_rate(round_dir, toy_lcm_path, tmp_path):
    d, _ = round_dir
    card = LoraCard(base_model="SimianLuo/LCM_Dreamshaper_v7", reward="reward model rm-1 (accuracy 0.70)", rounds=[1, 2, 3],
                    win_rate=0.64, win_votes=50, win_ci=(0.5, 0.76), license="openrail++", datasets=["me/prefs"])
    out = export_lora(d / "lora", tmp_path / "hub-base", card)
    loaded = ModelCard.load(out / "README.md")
    assert loaded.data.base_model == "SimianLuo/LCM_Dreamshaper_v7" and loaded.data.library_name == "diffusers"
    assert loaded.data.license == "openrail++" and loaded.data.datasets == ["me/prefs"]
    text = loaded.text
    assert "reward model rm-1 (accuracy 0.70)" in text and "1, 2, 3" in text
    assert "64.0% of people's A/B votes over the base (50 votes, 95% interval 50.0%–76.0%)" in text
    assert "r 4, lora_alpha 8" in text
    toy = ModelCard.load(export_lora(d, tmp_path / "toy-base", LoraCard(str(toy_lcm_path), "x")) / "README.md")
    assert toy.data.base_model is None and 'toy_model("toy-lcm")' in toy.text and "not measured" in toy.text


def test_export_refuses_what_is_not_a_lora(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="no pytorch_lora_weights"):
        export_lora(tmp_path, tmp_path / "out", LoraCard("b", "r"))
    save_file({"conv.weight": torch.zeros(2)}, tmp_path / WEIGHTS)
    with pytest.raises(ValueError, match="does not hold diffusers UNet LoRA"):
        export_lora(tmp_path, tmp_path / "out", LoraCard("b", "r"))
    assert not (tmp_path / "out").exists()
