"""Architectures of the embedded toy models: tiny diffusers/transformers/open_clip components.

Same component types as a real LCM (AutoencoderKL, CLIPTextModel, UNet2DConditionModel with
`time_cond_proj_dim`, LCMScheduler), only tiny. The UNet has cross-attention at every level and
a pooled-text embedding added to the time embedding (`addition_embed_type="text"`), because
text conditioning is what tiny models learn last.
"""

from __future__ import annotations

import json
from pathlib import Path

from .world import SIZE, vocabulary

LATENT_SIZE = 16  # 64 px -> 16x16x4 latents (VAE downsamples by 4)
MAX_TOKENS = 20  # longest caption is 14 words + bos/eos
TEXT_DIM = 64


def make_tokenizer():
    """Word-level fast tokenizer over the grammar's vocabulary; saves and reloads offline."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=MAX_TOKENS, pad_token="<pad>", unk_token="<unk>",
        bos_token="<bos>", eos_token="<eos>")


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, projection_dim=TEXT_DIM)
    return CLIPTextModel(cfg)


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, sample_size=SIZE, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16)


def unet_config(time_cond_proj_dim: int | None = None) -> dict:
    return dict(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96, 96),
        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        # the 16x16 level attends to the text only (self-attention over 256 tokens is the CPU cost)
        only_cross_attention=(True, False, False),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=16,
        addition_embed_type="text", addition_embed_type_num_heads=4,
        time_cond_proj_dim=time_cond_proj_dim)


def make_unet(time_cond_proj_dim: int | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(time_cond_proj_dim))


def noise_schedule() -> dict:
    """Stable Diffusion's schedule, so LCMScheduler/DDIMScheduler defaults line up."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon")


CLIP_NAME = "toy-clip"
# A small ModifiedResNet image tower: measured on the toy scenes, it retrieves the true caption among
# attribute-swapped ones 70% of the time after 600 steps, where a ViT (patch 8) of similar cost per step
# had 40% after 1,000. The text tower is open_clip's BPE transformer, so any English prompt tokenises.
CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": SIZE, "layers": [1, 1, 1, 1], "width": 24, "head_width": 32},
    "text_cfg": {"context_length": MAX_TOKENS, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


def register_clip_config(directory: str | Path) -> str:
    """Register the toy CLIP architecture with open_clip (writes its JSON config if needed)."""
    import open_clip

    path = Path(directory) / f"{CLIP_NAME}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(CLIP_CONFIG, indent=2))
    open_clip.add_model_config(path)
    return CLIP_NAME


def random_clip(directory: str | Path, seed: int = 0) -> Path:
    """A random-weight toy CLIP saved as an open_clip model directory (what `rlcm.clip.load_clip(dir)` reads): a
    stand-in backbone for tests and quick benchmarks when `data/models/toy-clip` is not built."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    name = register_clip_config(directory)
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors")
    return directory
