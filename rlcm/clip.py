"""CLIP backbones by name or path through open_clip: the shipped toy CLIP offline, a real one on a GPU."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class Clip:
    """A frozen open_clip model with its preprocessing and tokenizer."""

    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    name: str
    device: str = "cpu"
    _tower: threading.local = field(default_factory=threading.local, repr=False)  # per-thread hook output
    _hooked: bool = field(default=False, repr=False)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") and \
            self.model.text_projection is not None else int(self.embed_images([_blank()]).shape[1])

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings of PIL images."""
        x = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def image_features(self, images, kind: str = "embedding") -> torch.Tensor:
        """(N, F) image features: "embedding" is `embed_images`; "embedding+tower" appends the image tower's
        last-stage activations (conv stages: mean and max over space; ViT: mean over tokens), L2-normalised.
        Contrastive training makes the embedding ignore what captions never mention (how much of the image is
        warm, the exact size, texture); the tower's pooled activations still carry it."""
        if kind == "embedding":
            return self.embed_images(images)
        if kind != "embedding+tower":
            raise ValueError(f"unknown image features {kind!r}; valid: embedding, embedding+tower")
        self._hook_tower()
        emb = self.embed_images(images)  # the hook stores this thread's tower output on the way
        t = self._tower.out
        pooled = torch.cat([t.mean((2, 3)), t.amax((2, 3))], 1) if t.ndim == 4 else t.mean(1) if t.ndim == 3 else t
        return torch.cat([emb, F.normalize(pooled.float(), dim=-1)], 1)

    def _hook_tower(self) -> None:
        if self._hooked:
            return
        visual = self.model.visual
        module = getattr(visual, "layer4", None) or getattr(visual, "ln_post", None)  # ModifiedResNet / ViT
        if module is None:
            raise ValueError(f"{type(visual).__name__}: no known last stage (layer4 or ln_post) to pool")
        module.register_forward_hook(lambda _m, _i, out: setattr(self._tower, "out", out.detach()))
        self._hooked = True

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(N, D) L2-normalised text embeddings."""
        return F.normalize(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float(), dim=-1)

    @torch.no_grad()
    def score(self, images, texts: list[str]) -> torch.Tensor:
        """Cosine similarity of each image with its text, (N,)."""
        return (self.embed_images(images) * self.embed_texts(texts)).sum(-1)


def _blank():
    from PIL import Image

    return Image.new("RGB", (64, 64))


_CACHE: dict[str, Clip] = {}


def load_clip(name_or_path: str | Path, device: str = "cpu", pretrained: str | None = None) -> Clip:
    """Load a CLIP once per process.

    A directory holding `<arch>.json` and `open_clip_model.safetensors` (the toy CLIP) loads offline;
    otherwise `name_or_path` is an open_clip architecture (e.g. "ViT-L-14") with `pretrained` weights
    (a tag such as "openai" or a local file).
    """
    import open_clip

    key = f"{name_or_path}|{device}|{pretrained}"
    if key in _CACHE:
        return _CACHE[key]
    path = Path(name_or_path)
    if path.is_dir():
        configs = sorted(path.glob("*.json"))
        weights = path / "open_clip_model.safetensors"
        if not configs or not weights.exists():
            raise FileNotFoundError(f"{path} is not an open_clip model directory (needs <arch>.json and {weights.name})")
        cfg = configs[0]
        json.loads(cfg.read_text())  # fail clearly on a broken config
        open_clip.add_model_config(cfg)
        arch = cfg.stem
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(weights), device=device)
    else:
        arch = str(name_or_path)
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown CLIP {arch!r}: not a directory nor an open_clip architecture")
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
    model.eval().requires_grad_(False)
    clip = Clip(model, preprocess, open_clip.get_tokenizer(arch), arch, device)
    _CACHE[key] = clip
    return clip
