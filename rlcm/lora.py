"""LoRA adapters on the UNet (peft), saved in the diffusers format with their adapter metadata."""

from __future__ import annotations

from pathlib import Path

import torch

TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def add_lora(unet, rank: int, alpha: float, adapter_name: str = "default"):
    """Add a trainable LoRA to a frozen UNet; returns the LoraConfig."""
    from peft import LoraConfig

    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGETS)
    unet.requires_grad_(False)
    unet.add_adapter(cfg, adapter_name=adapter_name)
    return cfg


def lora_state(unet, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=adapter_name)


def save_lora(pipe_cls, unet, lora_config, directory: str | Path, adapter_name: str = "default") -> Path:
    """Write `pytorch_lora_weights.safetensors` with adapter metadata, so `pipe.load_lora_weights(dir)`
    keeps lora_alpha (without metadata, diffusers assumes alpha == r and silently rescales)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = convert_state_dict_to_diffusers(lora_state(unet, adapter_name))
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}
    pipe_cls.save_lora_weights(directory, unet_lora_layers=sd, unet_lora_adapter_metadata=lora_config.to_dict())
    return directory


def lora_digest(unet, adapter_name: str = "default") -> str:
    """sha256 of the LoRA's weights (names, dtypes, shapes and values): equal exactly when the adapters are, as
    after `save_lora_state` and `load_lora_file`."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(lora_state(unet, adapter_name).items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_lora_state(unet, path: str | Path, adapter_name: str = "default") -> Path:
    """Write the peft-format LoRA state (`lora_state`) to one safetensors file: what `load_lora_file` and
    `RLCMConfig.init_lora` read (the trainer's checkpoints, a round's saved epochs, a served adapter)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in lora_state(unet, adapter_name).items()}, path)
    return path


def load_lora_file(unet, path: str | Path, adapter_name: str = "default") -> None:
    """Restore a file written by `save_lora_state` into a UNet that has the adapter."""
    from safetensors.torch import load_file

    load_lora_into(unet, load_file(path), adapter_name)


def load_lora_into(unet, state: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Restore a peft-format LoRA state (from `lora_state`) into a UNet that has the adapter."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA state does not fit this UNet: unexpected keys {unexpected[:3]}...")
