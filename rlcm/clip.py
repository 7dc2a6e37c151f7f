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
    name: str  # architecture (or hub repo) name; also names its embedding cache, so no separators
    device: str = "cpu"
    source: str = ""  # portable id load_clip takes back: "toy-clip", "hf-hub:org/repo", an open_clip name, or a path
    pretrained: str | None = None  # open_clip pretrained tag (or weights file) that goes with an open_clip name
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
HF_HUB_PREFIX = "hf-hub:"  # open_clip's scheme for a Hub repo holding open_clip_config.json and weights


def load_clip(name_or_path: str | Path, device: str = "cpu", pretrained: str | None = None) -> Clip:
    """Load a CLIP once per process; `clip.source` / `clip.pretrained` say how to load it again anywhere.

    - a shipped toy model by name ("toy-clip", see `rlcm.paths`) or a directory holding `<arch>.json` and
      `open_clip_model.safetensors` (the toy CLIP's layout) loads offline;
    - "hf-hub:org/repo" loads an open_clip repo (as HPSv2 and PickScore publish theirs) from the Hub, or from
      the local Hugging Face cache when offline; `pretrained` is ignored;
    - otherwise an open_clip architecture (e.g. "ViT-L-14") with `pretrained` weights (a tag such as
      "openai", or a local file).
    """
    import open_clip

    from .paths import TOY_MODELS, toy_model, toy_model_name

    spec = str(name_or_path)
    if spec in TOY_MODELS:
        spec = str(toy_model(spec))
    path = Path(spec)
    if spec.startswith(HF_HUB_PREFIX):
        source, pretrained, key_src = spec, None, spec
    elif path.is_dir():
        key_src = str(path.resolve())
        source = toy_model_name(path) or key_src  # a shipped model is recorded by name, anything else by path
    else:
        source = key_src = spec
    key = f"{key_src}|{device}|{pretrained}"
    if key in _CACHE:
        return _CACHE[key]
    if spec.startswith(HF_HUB_PREFIX):
        model, preprocess, tokenizer, name = _load_hub(open_clip, spec, device)
    elif path.is_dir():
        configs = sorted(path.glob("*.json"))
        weights = path / "open_clip_model.safetensors"
        if not configs or not weights.exists():
            raise FileNotFoundError(f"{path} is not an open_clip model directory (needs <arch>.json and {weights.name})")
        cfg = configs[0]
        json.loads(cfg.read_text())  # fail clearly on a broken config
        open_clip.add_model_config(cfg)
        name = cfg.stem
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(weights), device=device)
        tokenizer = open_clip.get_tokenizer(name)
    else:
        name = spec
        if name not in open_clip.list_models():
            raise ValueError(f"unknown CLIP {name!r}: not a shipped toy model ({', '.join(TOY_MODELS)}), a directory, "
                             f"an {HF_HUB_PREFIX}org/repo id nor an open_clip architecture")
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    model.eval().requires_grad_(False)
    clip = Clip(model, preprocess, tokenizer, name, device, source=source, pretrained=pretrained)
    _CACHE[key] = clip
    return clip


def _load_hub(open_clip, spec: str, device: str):
    """(model, preprocess, tokenizer, name) of an "hf-hub:org/repo" CLIP, refusing one without weights."""
    from open_clip.pretrained import download_pretrained_from_hf

    repo = spec[len(HF_HUB_PREFIX):]
    try:  # open_clip only warns and keeps random weights when the weights file is missing: check first
        download_pretrained_from_hf(repo)
        model, _, preprocess = open_clip.create_model_and_transforms(spec, device=device)
    except (FileNotFoundError, RuntimeError, OSError) as e:
        raise ValueError(f"cannot load {spec}: {e} (offline, it must be in the local Hugging Face cache)") from None
    return model, preprocess, open_clip.get_tokenizer(spec), repo.replace("/", "--")
