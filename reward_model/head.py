"""The reward head: an ensemble of K small MLPs on [image, prompt, image*prompt] CLIP features, and the BT loss.

All K heads live in stacked tensors, so one matmul evaluates the whole ensemble. Features are
standardised with the training set's mean and std, stored as buffers beside the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def features(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """(N, I + 2D) head input from (N, I) image features (the first D: the CLIP embedding) and (N, D) prompt
    embeddings: [image, prompt, embedding * prompt]."""
    return torch.cat([img, txt, img[:, : txt.shape[1]] * txt], dim=-1)


class EnsembleHead(nn.Module):
    """K independent two-layer MLPs (GELU) mapping standardised features to one reward each; `hidden=0` makes
    each head linear (w1 is then (K, F, 1) and there is no b1 or w2)."""

    def __init__(self, embed_dim: int, hidden: int, ensemble_size: int, seed: int = 0, image_dim: int | None = None):
        super().__init__()
        k, f = ensemble_size, (image_dim or embed_dim) + 2 * embed_dim
        g = torch.Generator().manual_seed(seed)
        if hidden == 0:
            self.w1 = nn.Parameter(torch.zeros(k, f, 1))  # (K, F, 1) a linear reward starts flat
            self.b1 = self.w2 = None
        else:
            self.w1 = nn.Parameter(torch.randn(k, f, hidden, generator=g) / f**0.5)  # (K, F, H)
            self.b1 = nn.Parameter(torch.zeros(k, hidden))  # (K, H)
            self.w2 = nn.Parameter(torch.randn(k, hidden, generator=g) / hidden**0.5)  # (K, H)
        self.b2 = nn.Parameter(torch.zeros(k))  # (K,)
        self.register_buffer("mean", torch.zeros(f))  # (F,) feature standardisation
        self.register_buffer("std", torch.ones(f))  # (F,)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """(K, N) rewards, one row per head."""
        x = (features(img, txt) - self.mean) / self.std  # (N, F)
        if self.w2 is None:
            return torch.einsum("nf,kf->kn", x, self.w1[..., 0]) + self.b2[:, None]  # (K, N)
        h = F.gelu(torch.einsum("nf,kfh->knh", x, self.w1) + self.b1[:, None])  # (K, N, H)
        return torch.einsum("knh,kh->kn", h, self.w2) + self.b2[:, None]  # (K, N)


def bt_loss(r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry: P(a preferred) = sigmoid(r_a - r_b); y is 1 for a, 0 for b, 0.5 for a tie. Elementwise."""
    return F.binary_cross_entropy_with_logits(r_a - r_b, y.expand_as(r_a), reduction="none")
