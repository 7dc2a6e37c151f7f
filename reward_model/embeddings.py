"""Frozen-CLIP embeddings cached per sample and per prompt, in memory and on disk, so refitting skips the backbone.

On disk: `data_dir/embeddings/<clip name>-<weights fingerprint>/{images,texts}-*.safetensors`, each chunk an
(M, D) tensor with its keys (sample ids or prompt texts) in the safetensors metadata. The fingerprint
hashes the backbone's weights, so two checkpoints of one architecture never share a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from .perceptual import CUES as PERCEPTUAL_CUES
from .perceptual import DIM as PERCEPTUAL_DIM
from .perceptual import GROUPS as PERCEPTUAL_GROUPS
from .perceptual import NAMES as PERCEPTUAL_NAMES
from .perceptual import VERSION as PERCEPTUAL_VERSION
from .perceptual import perceptual_features

MERGE_AT = 32  # chunk files per kind before they are merged into one

# image-feature kinds: the CLIP embedding first (the head multiplies it with the prompt embedding), then
# "tower": the image tower's pooled last stage (rlcm.clip.Clip.image_features);
# "perceptual": generic colour, layout, subject and texture statistics (reward_model.perceptual)
IMAGE_FEATURES = ("embedding", "embedding+tower", "embedding+perceptual", "embedding+tower+perceptual")


def check_image_features(kind: str) -> str:
    if kind not in IMAGE_FEATURES:
        raise ValueError(f"unknown image features {kind!r}; valid: {', '.join(IMAGE_FEATURES)}")
    return kind


def feature_groups(kind: str, image_dim: int, embed_dim: int) -> dict[str, slice]:
    """Which columns of (N, image_dim) features of `kind` hold what: "embedding", "tower", then the perceptual
    blocks ("colour", "layout", "subject", "texture")."""
    parts = check_image_features(kind).split("+")
    n_perceptual = PERCEPTUAL_DIM if "perceptual" in parts else 0
    groups = {"embedding": slice(0, embed_dim)}
    if "tower" in parts:
        groups["tower"] = slice(embed_dim, image_dim - n_perceptual)
    if n_perceptual:
        start = image_dim - n_perceptual
        groups.update({g: slice(start + s.start, start + s.stop) for g, s in PERCEPTUAL_GROUPS.items()})
    if max(s.stop for s in groups.values()) != image_dim:
        raise ValueError(f"{image_dim} image columns do not fit the layout of {kind!r} features")
    return groups


def feature_cues(kind: str, image_dim: int, embed_dim: int) -> dict[str, list[int]]:
    """The columns of each perceptual cue (perceptual.CUES) in (N, image_dim) features of `kind`; none without
    perceptual statistics."""
    groups = feature_groups(kind, image_dim, embed_dim)
    if "colour" not in groups:
        return {}
    start = groups["colour"].start  # the perceptual block's first column
    return {cue: [start + PERCEPTUAL_NAMES.index(n) for n in names] for cue, names in PERCEPTUAL_CUES.items()}


@torch.no_grad()
def image_features(clip, images: list[Image.Image], kind: str) -> torch.Tensor:
    """(N, I) image features of `kind` (see IMAGE_FEATURES): CLIP's part, then the perceptual statistics."""
    parts = check_image_features(kind).split("+")
    feats = clip.image_features(images, "embedding+tower" if "tower" in parts else "embedding")
    if "perceptual" in parts:
        feats = torch.cat([feats, perceptual_features(images).to(feats.device)], 1)
    return feats


def clip_fingerprint(clip) -> str:
    """sha256 (16 hex digits) of the backbone's state dict: names, shapes and bytes; computed once per object."""
    fp = clip.__dict__.get("_fingerprint")
    if fp is None:
        h = hashlib.sha256()
        for name, t in sorted(clip.model.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        fp = h.hexdigest()[:16]
        clip.__dict__["_fingerprint"] = fp
    return fp


def clip_key(clip) -> str:
    return f"{clip.name}-{clip_fingerprint(clip)}"


class EmbeddingCache:
    """Image embeddings by sample id and text embeddings by prompt for one CLIP; thread-safe.

    `data_dir=None` keeps everything in memory.
    """

    def __init__(self, clip, data_dir: str | Path | None = None, image_features: str = "embedding",
                 batch_size: int = 64):
        self.clip = clip
        self.batch_size = batch_size
        self.image_features = check_image_features(image_features)
        self.dir = Path(data_dir) / "embeddings" / clip_key(clip) if data_dir is not None else None
        # image features of another kind live in their own files ("images" keeps the plain embedding's name)
        # (and perceptual statistics carry their version: a changed definition never reads stale files)
        self._image_kind = "images" if image_features == "embedding" else f"images_{image_features.replace('+', '_')}"
        if "perceptual" in image_features:
            self._image_kind += f"_v{PERCEPTUAL_VERSION}"
        self._store: dict[str, dict[str, torch.Tensor]] = {self._image_kind: {}, "texts": {}}
        self._lock = threading.Lock()
        if self.dir is not None:
            for kind in self._store:
                self._load(kind)

    # -- disk

    def _load(self, kind: str) -> None:
        for f in sorted(self.dir.glob(f"{kind}-*.safetensors")):
            try:
                with safe_open(f, framework="pt") as fh:
                    keys, t = json.loads(fh.metadata()["keys"]), fh.get_tensor("emb")
            except Exception:  # a chunk being merged away by another process, or a torn file: recompute
                continue
            if len(keys) == len(t):
                self._store[kind].update(zip(keys, t))

    def _save(self, kind: str, keys: list[str], emb: torch.Tensor) -> None:
        if self.dir is None or not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{kind}-{time.time_ns()}-{uuid.uuid4().hex[:8]}.safetensors"
        tmp = self.dir / f".tmp-{name}"
        save_file({"emb": emb.contiguous()}, tmp, metadata={"keys": json.dumps(keys)})
        os.replace(tmp, self.dir / name)
        chunks = sorted(self.dir.glob(f"{kind}-*.safetensors"))
        if len(chunks) > MERGE_AT:
            all_keys = list(self._store[kind])
            merged = f"{kind}-{time.time_ns()}-merged.safetensors"
            save_file({"emb": torch.stack([self._store[kind][k] for k in all_keys])}, self.dir / f".tmp-{merged}",
                      metadata={"keys": json.dumps(all_keys)})
            os.replace(self.dir / f".tmp-{merged}", self.dir / merged)
            for c in chunks:
                c.unlink(missing_ok=True)

    # -- lookups

    def _get(self, kind: str, keys: list[str], compute: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            store = self._store[kind]
            missing = list(dict.fromkeys(k for k in keys if k not in store))
            if missing:
                parts = [compute(missing[i:i + self.batch_size]).cpu() for i in range(0, len(missing), self.batch_size)]
                emb = torch.cat(parts)
                store.update(zip(missing, emb))
                self._save(kind, missing, emb)
            if not keys:
                return torch.zeros(0, self._dim(kind))
            return torch.stack([store[k] for k in keys])

    def _dim(self, kind: str) -> int:
        for v in self._store[kind].values():
            return int(v.shape[0])
        if kind == "texts":
            return int(self.clip.embed_texts(["a"]).shape[1])
        return int(image_features(self.clip, [Image.new("RGB", (64, 64))], self.image_features).shape[1])

    @property
    def embed_dim(self) -> int:
        """Width D of the prompt embeddings (the image features may be wider)."""
        return self._dim("texts")

    def images(self, ids: list[str], load_image: Callable[[str], Image.Image]) -> torch.Tensor:
        """(N, I) image features of samples by id; `load_image(id)` is called only for ids not cached yet."""
        return self._get(self._image_kind, list(ids),
                         lambda miss: image_features(self.clip, [load_image(i) for i in miss], self.image_features))

    def texts(self, prompts: list[str]) -> torch.Tensor:
        """(N, D) embeddings of prompts."""
        return self._get("texts", list(prompts), lambda miss: self.clip.embed_texts(miss))

    def __len__(self) -> int:
        return len(self._store[self._image_kind])
