"""Drive the store as a person would (next_pair -> prefer -> record_comparison) with a simulated rater."""

from __future__ import annotations

import random
import uuid
from collections import Counter

from .pairs import Uncertainty
from .raters import Rater
from .store import FeedbackStore


def simulate(store: FeedbackStore, rater_fn: Rater, n_pairs: int, rater_name: str, generator: str | None = None,
             uncertainty: Uncertainty | None = None, rng: random.Random | int | None = 0) -> dict:
    """Label up to `n_pairs` pairs as `rater_name`; returns counts of the answers and whether pairs ran out.

    `next_pair` never repeats a pair for a rater, so re-running a simulation labels new pairs only.
    """
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    answers: Counter = Counter()
    for _ in range(n_pairs):
        pair = store.next_pair(rater_name, generator=generator, uncertainty=uncertainty, rng=rng)
        if pair is None:
            return {"recorded": sum(answers.values()), **answers, "exhausted": True}
        a, b = pair
        choice = rater_fn(store.load_image(a["id"]), store.load_image(b["id"]), a["prompt"])
        store.record_comparison(a["id"], b["id"], choice, rater_name, client_id=f"sim-{uuid.uuid4()}")
        answers[choice] += 1
    return {"recorded": sum(answers.values()), **answers, "exhausted": False}
