"""Honest held-out accuracy: one home for the 95% Wilson interval and the better-than-chance verdict.

How pairs count: a pair the rater called a tie has no right answer, so it is left out of the accuracy (it
still counts in the log-loss, as 1/2); a model that calls a decided pair exactly 50/50 gets half a hit.
So accuracy = hits / n over the decided held-out pairs, and n is what the interval is computed on.
"""

from __future__ import annotations

import math


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (z = 1.96: 95%). Ties may make k a half-integer.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0, k = n and small n.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(hits: float, n: int, z: float = 1.96) -> dict:
    """`accuracy`, its n, `accuracy_ci` [low, high] and `better_than_chance` (low > 0.5); all None when n is 0."""
    if n == 0:
        return {"accuracy": None, "accuracy_n": 0, "accuracy_ci": None, "better_than_chance": None}
    low, high = wilson_interval(hits, n, z)
    return {"accuracy": hits / n, "accuracy_n": n, "accuracy_ci": [low, high], "better_than_chance": low > 0.5}


def format_accuracy(summary: dict) -> str:
    """'0.873 [0.832, 0.905], n=250' or 'n/a (no decided pairs)'."""
    if summary.get("accuracy") is None:
        return "n/a (no decided pairs)"
    low, high = summary["accuracy_ci"]
    return f"{summary['accuracy']:.3f} [{low:.3f}, {high:.3f}], n={summary['accuracy_n']}"
