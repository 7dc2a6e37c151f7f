"""Human feedback: a SQLite store of samples and pairwise ratings, pair selection, exchange, backups, simulated raters."""

from .raters import RATERS, load_rater, noisy
from .simulate import simulate
from .store import CHOICES, FeedbackStore

__all__ = ["CHOICES", "FeedbackStore", "RATERS", "load_rater", "noisy", "simulate"]
