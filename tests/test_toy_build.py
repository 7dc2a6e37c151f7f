"""The build script's teacher stage continues a saved teacher (`--teacher-init`) instead of starting over."""

import shutil

import torch
from diffusers import StableDiffusionPipeline

from rlcm.toy.build import BuildConfig, stage_data, stage_latents, stage_teacher


def _flat(unet) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in unet.parameters()])


def test_teacher_continues_from_a_saved_pipeline(toy_teacher_path, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    shutil.copytree(toy_teacher_path / "vae", work / "vae")
    cfg = BuildConfig(out=out, work=work, n_scenes=64, teacher_batch=4, teacher_steps=1002, eval_every=10**9,
                      eval_prompts=2, teacher_init=toy_teacher_path, teacher_init_step=1000)
    stage_data(cfg)
    stage_latents(cfg)
    stage_teacher(cfg)  # two optimiser steps from the shipped weights, then its held-out eval and save
    shipped = _flat(StableDiffusionPipeline.from_pretrained(toy_teacher_path, local_files_only=True).unet)
    continued = _flat(StableDiffusionPipeline.from_pretrained(out / "toy-teacher", local_files_only=True).unet)
    moved = (continued - shipped).norm() / shipped.norm()
    assert 0 < moved < 0.01, moved  # trained a little, from the shipped weights (a fresh init is ~100% away)
