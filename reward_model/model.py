"""The fitted reward model: a frozen CLIP plus an ensemble head; scores images for prompts, with uncertainty."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from huggingface_hub import ModelHubMixin
from PIL import Image

from .embeddings import EmbeddingCache, clip_fingerprint, image_features
from .head import EnsembleHead

FORMAT = "rlcm-reward-model"
FORMAT_VERSION = 2  # 2: the backbone source is portable (toy name, hf-hub id, open_clip name)
READS_VERSIONS = (1, 2)  # v1 recorded a path such as "data/models/toy-clip"; load maps it to the shipped name


@dataclass
class ModelConfig:
    """What `config.json` records; enough to rebuild the head and check the backbone."""

    version: str  # model version, e.g. "20260101-120000-1a2b3c4d"
    backbone: dict  # name, source (portable: see rlcm.clip.load_clip), pretrained tag, fingerprint of its weights
    embed_dim: int  # CLIP embedding size D
    hidden: int  # hidden width of each head (0: linear heads)
    ensemble_size: int  # number of heads K
    image_features: str = "embedding"  # one of reward_model.embeddings.IMAGE_FEATURES
    image_dim: int | None = None  # width I of the image features (None: D)
    features: str = "[img, txt, img_embedding*txt]"  # head input, I + 2D wide
    normalisation: str = "CLIP embeddings L2-normalised; head input standardised by training mean/std"
    output: str = "reward = mean over heads; P(a over b) = mean over heads of sigmoid(r_a - r_b)"
    data: dict = field(default_factory=dict)  # sizes of the data it was fitted on
    card: dict = field(default_factory=dict)  # model card metadata kept across re-exports (see export.CardInfo)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)


def clip_source(clip) -> tuple[str, str | None]:
    """How to load `clip` again on any machine: its portable source and pretrained tag (see `rlcm.clip.Clip`)."""
    return getattr(clip, "source", "") or clip.name, getattr(clip, "pretrained", None)


class RewardModel(ModelHubMixin, library_name="rlcm-studio", tags=["reward-model", "rlcm", "preference-learning"]):
    """`score(images, prompts)` -> (N,) rewards; `uncertainty` -> (N,) spread of the ensemble."""

    def __init__(self, clip, head: EnsembleHead, config: ModelConfig, metrics: dict | None = None):
        self.clip = clip
        self.head = head.eval().requires_grad_(False)
        self.config = config
        self.metrics = metrics or {}

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def device(self) -> torch.device:
        return self.head.w1.device

    def to(self, device) -> "RewardModel":
        self.head.to(device)
        return self

    @torch.no_grad()
    def head_scores(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """(K, N) per-head rewards from (N, D) embeddings."""
        return self.head(img_emb.to(self.device).float(), txt_emb.to(self.device).float())

    @torch.no_grad()
    def _embed(self, images: list[Image.Image], prompts: list[str], batch: int = 64):
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        if not images:
            d = self.config.embed_dim
            return torch.zeros(0, self.config.image_dim or d), torch.zeros(0, d)
        kind = self.config.image_features
        img = torch.cat([image_features(self.clip, images[i:i + batch], kind) for i in range(0, len(images), batch)])
        uniq = list(dict.fromkeys(prompts))
        txt_u = self.clip.embed_texts(uniq)
        txt = txt_u[[uniq.index(p) for p in prompts]]
        return img, txt

    def head_scores_for(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """(K, N) per-head rewards of images for their prompts."""
        return self.head_scores(*self._embed(list(images), list(prompts)))

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """(N,) reward of each image for its prompt (mean over the ensemble; higher is preferred)."""
        return self.head_scores_for(images, prompts).mean(0).cpu()

    def as_reward_fn(self) -> Callable[[list, list[str]], "np.ndarray"]:
        """`fn(images, prompts) -> (N,) float32 np.ndarray` of `score`: the form `rlcm.rewards` takes a learned
        reward in (e.g. `get_reward("preference", model=rm.as_reward_fn())`), so `rlcm` never imports this package."""
        import numpy as np

        return lambda images, prompts: self.score(list(images), list(prompts)).numpy().astype(np.float32)

    def uncertainty(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """(N,) standard deviation of the reward across the ensemble (0 for a single head)."""
        r = self.head_scores_for(images, prompts)
        return (r.std(0) if r.shape[0] > 1 else torch.zeros(r.shape[1])).cpu()

    @staticmethod
    def pair_probability(r_a: torch.Tensor, r_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From (K, N) rewards: mean P(a preferred) over heads and its std across heads, each (N,)."""
        p = torch.sigmoid(r_a - r_b)  # (K, N)
        return p.mean(0), (p.std(0) if p.shape[0] > 1 else torch.zeros_like(p[0]))

    @classmethod
    def pair_uncertainty_of(cls, r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
        """From (K, N) rewards: u = 1 - |2p - 1| + std_k(p_k), in [0, 1.5]; high when unsure. (N,)"""
        p, spread = cls.pair_probability(r_a, r_b)
        return 1 - (2 * p - 1).abs() + spread

    def pair_uncertainty(self, store, cache: EmbeddingCache | None = None) -> Callable[[list[tuple[str, str]]], list[float]]:
        """An `uncertainty` for `FeedbackStore.next_pair`: high when P(a over b) is near 0.5 or the heads disagree.

        u = 1 - |2p - 1| + std_k(p_k), in [0, 1.5]; embeddings go through `cache` (default: the store's).
        Build it once per model and reuse it: the returned function keeps its cache warm.
        """
        cache = cache if cache is not None else EmbeddingCache(self.clip, store.data_dir, self.config.image_features)

        def uncertainty(pairs: list[tuple[str, str]]) -> list[float]:
            if not pairs:
                return []
            ids = [s for pair in pairs for s in pair]
            prompts = [store.get_sample(s)["prompt"] for s in ids]
            r = self.head_scores(cache.images(ids, store.load_image), cache.texts(prompts))  # (K, 2P)
            return self.pair_uncertainty_of(r[:, 0::2], r[:, 1::2]).tolist()

        return uncertainty

    def check_backbone(self, clip) -> None:
        """Raise ValueError unless `clip` has the weights this model was fitted on."""
        want = self.config.backbone.get("fingerprint")
        got = clip_fingerprint(clip)
        if want != got:
            raise ValueError(f"backbone mismatch: this reward model was fitted on {self.config.backbone.get('name')} "
                             f"with weights {want}, but the CLIP given has weights {got}; pass the same CLIP")

    # -- Hugging Face Hub: save_pretrained / from_pretrained / push_to_hub write and read exactly export's files

    def _save_pretrained(self, save_directory) -> None:
        from .export import write_files

        write_files(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir=None,
                         force_download: bool = False, local_files_only: bool = False, token=None,
                         clip=None, device: str = "cpu", backbone=None, **_config_keys) -> "RewardModel":
        from .export import load

        return load(model_id, clip=clip, device=device, backbone=backbone, revision=revision, cache_dir=cache_dir,
                    token=token, local_files_only=local_files_only, force_download=force_download)
