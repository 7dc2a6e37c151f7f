"""Load generator pipelines by path or hub id: the embedded toy LCM, a real LCM, or SD-1.5 + LCM-LoRA."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

DEFAULT_MODEL = "toy-lcm"  # shipped toy models go by name (rlcm.paths finds them in a checkout or a wheel)
TEACHER_MODEL = "toy-teacher"
# diffusers' low-memory loading builds models under accelerate's init_empty_weights, which patches
# nn.Module globally: a model built in another thread meanwhile gets meta tensors. So loads take this lock
# and skip the low-memory path (the studio loads while its queue and trainer threads run).
LOAD_LOCK = threading.RLock()


def pick_device(device: str | None = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(model: str = DEFAULT_MODEL, lcm_lora: str | None = None, device: str | None = None,
                  dtype: torch.dtype | None = None, scheduler: str | None = None):
    """A diffusers pipeline ready for `rlcm.policy.make_policy`.

    model     a local directory or a hub id (`SimianLuo/LCM_Dreamshaper_v7`); offline when HF_HUB_OFFLINE=1
    lcm_lora  an LCM-LoRA (path or hub id) fused into an SD-1.5 pipeline, which then samples with LCMScheduler
    dtype     float16 on a GPU by default, float32 on a CPU
    """
    from diffusers import DiffusionPipeline, LCMScheduler

    from .paths import TOY_MODELS, toy_model

    if model in TOY_MODELS:
        model = str(toy_model(model))
    device = pick_device(device)
    dtype = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
    local = Path(model).is_dir()
    if not local and Path(model).exists():
        raise ValueError(f"{model} is not a pipeline directory")
    offline = local or os.environ.get("HF_HUB_OFFLINE") == "1"
    with LOAD_LOCK:
        try:
            pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype, local_files_only=offline,
                                                     safety_checker=None, requires_safety_checker=False,
                                                     low_cpu_mem_usage=False)
        except (OSError, ValueError) as e:
            where = "this directory" if local else "the local Hugging Face cache (offline)" if offline else "the Hub"
            raise RuntimeError(f"cannot load pipeline {model!r} from {where}: {e}") from e
        if lcm_lora:
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
            pipe.load_lora_weights(lcm_lora, adapter_name="lcm", low_cpu_mem_usage=False)
            pipe.fuse_lora()  # bake the distillation LoRA into the base so RL adapters sit on a plain UNet
            pipe.unload_lora_weights()
        elif scheduler == "lcm":
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        for part in ("unet", "vae", "text_encoder"):
            getattr(pipe, part).requires_grad_(False)
        return pipe.to(device)
