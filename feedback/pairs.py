"""Which pair to show a rater next: same prompt, different seeds, current generator mixed with earlier ones.

Pure functions over sample rows, so the policy is tested without a database.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

Uncertainty = Callable[[list[tuple[str, str]]], list[float]]

# What a labelled choice says: the probability that a was preferred (the Bradley-Terry target, Pick-a-Pic's
# label_0); skips carry no label. The one definition, for the reward model, the Parquet files and the gate.
LABEL = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass
class PairPolicy:
    cross_fraction: float = 0.5  # how often to pair the current generator with an earlier one (when both exist)
    max_candidates: int = 64  # candidate pairs scored by the uncertainty function per request


def pair_key(a: str, b: str) -> tuple[str, str]:
    """Order-free identity of a pair."""
    return (a, b) if a <= b else (b, a)


def candidate_pairs(samples: Iterable[dict], judged: set[tuple[str, str]], current: str | None,
                    rng: random.Random, cap: int) -> dict[str, list[tuple[str, str]]]:
    """Unjudged pairs grouped by kind: "cross" (current vs earlier), "current" (both current), "earlier".

    Samples are dicts with id, prompt_id, seed and generator. Two samples pair when they share a prompt,
    differ in seed (a missing seed counts as different) and the rater has not judged them in either
    order. Prompts are visited in random order and each kind keeps at most `cap` pairs, so the cost
    stays bounded however large the store grows.
    """
    by_prompt: dict[object, list[dict]] = defaultdict(list)
    for s in samples:
        by_prompt[s["prompt_id"]].append(s)
    groups = list(by_prompt.values())
    rng.shuffle(groups)
    out: dict[str, list[tuple[str, str]]] = {"cross": [], "current": [], "earlier": []}
    for group in groups:
        if len(group) < 2:
            continue
        rng.shuffle(group)
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a["seed"] is not None and a["seed"] == b["seed"]:
                    continue
                if pair_key(a["id"], b["id"]) in judged:
                    continue
                n_current = (a["generator"] == current) + (b["generator"] == current)
                kind = ("earlier", "cross", "current")[n_current]
                if len(out[kind]) < cap:
                    out[kind].append((a["id"], b["id"]))
        if all(len(v) >= cap for v in out.values()):
            break
    return out


def choose_pair(candidates: dict[str, list[tuple[str, str]]], rng: random.Random,
                uncertainty: Uncertainty | None = None, policy: PairPolicy = PairPolicy()) -> tuple[str, str] | None:
    """Pick a kind (cross with probability `cross_fraction`, else current; earlier only as a fallback),
    then the most uncertain candidate of that kind (random without an uncertainty function),
    shown in random left/right order."""
    first = "cross" if rng.random() < policy.cross_fraction else "current"
    order = [first, "current" if first == "cross" else "cross", "earlier"]
    pool = next((candidates[k] for k in order if candidates.get(k)), None)
    if not pool:
        return None
    pool = rng.sample(pool, min(len(pool), policy.max_candidates))
    if uncertainty is None:
        a, b = pool[0]
    else:
        scores = [float(u) for u in uncertainty(pool)]
        scores = [u if u == u else float("-inf") for u in scores]  # NaN ranks last
        if len(scores) != len(pool):
            raise ValueError(f"uncertainty returned {len(scores)} scores for {len(pool)} pairs")
        best = max(scores)
        a, b = rng.choice([p for p, u in zip(pool, scores) if u == best])
    return (a, b) if rng.random() < 0.5 else (b, a)
