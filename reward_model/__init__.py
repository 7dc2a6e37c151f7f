"""Learned reward: a frozen CLIP with a Bradley–Terry ensemble head fitted on pairwise ratings; export and load."""

from .embeddings import EmbeddingCache
from .export import CardInfo, export, load, push_to_hub
from .fit import FitConfig, accuracy_curve, evaluate, fit
from .model import RewardModel

__all__ = ["CardInfo", "EmbeddingCache", "FitConfig", "RewardModel", "accuracy_curve", "evaluate", "export", "fit",
           "load", "push_to_hub"]
