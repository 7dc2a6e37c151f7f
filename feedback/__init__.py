"""Human feedback: a SQLite store of samples and pairwise ratings, pair selection, exchange, backups, simulated raters."""

from .pairs import PairPolicy
from .raters import RATERS, load_rater, noisy
from .simulate import simulate
from .store import CHOICES, FeedbackStore

__all__ = ["CHOICES", "FeedbackStore", "PairPolicy", "RATERS", "load_rater", "noisy", "simulate"]
