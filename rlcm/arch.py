"""Random-weight pipelines of the real SD-1.5 / LCM-Dreamshaper architecture family, built offline.

`tiny` keeps the block layout of SD-1.5 (3 cross-attention down blocks + a plain one, 2 layers per block,
CLIP-L-style text encoder) with small widths, for tests; `full` is the real size (860 M UNet), for GPU
benchmarks. Nothing is downloaded: the tokenizer is the toy word-level one.
"""

from __future__ import annotations

import torch

SIZES = {
    "tiny": dict(channels=(32, 64, 64, 64), layers=2, heads=2, text_dim=32, text_layers=2, vae=(32, 32),
                 sample=64, groups=16),
    "full": dict(channels=(320, 640, 1280, 1280), layers=2, heads=8, text_dim=768, text_layers=12,
                 vae=(128, 256, 512, 512), sample=512, groups=32),
}


def sd15_components(size: str = "tiny", time_cond_proj_dim: int | None = 256, seed: int = 0):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .toy.models import make_tokenizer

    s = SIZES[size]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=s["sample"] // 2 ** (len(s["vae"]) - 1), in_channels=4, out_channels=4,
        block_out_channels=s["channels"], layers_per_block=s["layers"],
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=s["text_dim"], attention_head_dim=s["heads"], norm_num_groups=s["groups"],
        time_cond_proj_dim=time_cond_proj_dim)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=s["vae"],
        down_block_types=("DownEncoderBlock2D",) * len(s["vae"]), up_block_types=("UpDecoderBlock2D",) * len(s["vae"]),
        layers_per_block=1 if size == "tiny" else 2, norm_num_groups=s["groups"], sample_size=s["sample"])
    tok = make_tokenizer()
    tok.model_max_length = 77 if size == "full" else tok.model_max_length
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=max(len(tok), 49408 if size == "full" else len(tok)), hidden_size=s["text_dim"],
        intermediate_size=4 * s["text_dim"], num_hidden_layers=s["text_layers"], num_attention_heads=4,
        max_position_embeddings=tok.model_max_length, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    return dict(unet=unet, vae=vae, text_encoder=te, tokenizer=tok)


def lcm_pipeline(size: str = "tiny", seed: int = 0):
    """An LCM of the Dreamshaper-v7 layout (w-embedding through `time_cond_proj_dim`)."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    c = sd15_components(size, 256 if size == "full" else 32, seed)
    return LatentConsistencyModelPipeline(**c, scheduler=LCMScheduler(beta_schedule="scaled_linear",
                                          beta_start=0.00085, beta_end=0.012), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)


def sd15_pipeline(size: str = "tiny", seed: int = 0, scheduler: str = "ddim"):
    """A plain SD-1.5-layout pipeline (no w-embedding), for the LCM-LoRA variant or the DDPO baseline."""
    from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

    c = sd15_components(size, None, seed)
    kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched = LCMScheduler(**kw) if scheduler == "lcm" else DDIMScheduler(**kw, clip_sample=False,
                                                                        set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(**c, scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def random_lcm_lora(pipe, directory, rank: int = 4, seed: int = 1):
    """Save a random LoRA in the diffusers format (a stand-in for an LCM-LoRA such as latent-consistency/lcm-lora-sdv1-5)."""
    from .lora import add_lora, save_lora

    torch.manual_seed(seed)
    cfg = add_lora(pipe.unet, rank, rank, adapter_name="lcm_stub")
    for n, p in pipe.unet.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    save_lora(type(pipe), pipe.unet, cfg, directory, adapter_name="lcm_stub")
    pipe.unet.delete_adapters("lcm_stub")
    return directory
