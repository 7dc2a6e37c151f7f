"""The held-out pairs on which the one-off reward-model benches (cold_pairs.py, pair_selection.py) measure a
reward model: base toy images of held-out prompts, 4 seeds each, and the rater's verdicts on their 6 pairs."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from rlcm.prompts import get_prompts
from studio.serving import BASE

PAIRS = list(itertools.combinations(range(4), 2))
WIN = {"a": 1.0, "tie": 0.5, "b": 0.0}


@dataclass
class HeldOut:
    prompts: list[str]
    images: list[list]  # per prompt, its 4 images (seeds 50_000 + 4k + s)
    decided: list[tuple[int, int, int, str]]  # (prompt index, image a, image b, "a" or "b"): the rater's non-ties
    rater: object

    def measure(self, rm) -> tuple[float, float]:
        """The model's pairwise accuracy on the decided pairs, and the rater's win rate (ties half) of the
        model's best of 4 against the first seed."""
        s = [rm.score(ims, [p] * 4) for ims, p in zip(self.images, self.prompts)]  # each image scored once
        acc = np.mean([(float(s[k][a]) > float(s[k][b])) == (y == "a") for k, a, b, y in self.decided])
        best = np.mean([WIN[self.rater(ims[int(s[k].argmax())], ims[0], p)]
                        for k, (ims, p) in enumerate(zip(self.images, self.prompts))])
        return float(acc), float(best)


def held_out(gen, rater, n_prompts: int, max_pairs: int | None = None) -> HeldOut:
    """The first `n_prompts` of the toy held-out prompts (seed 4), rendered by the base of `gen`."""
    prompts = get_prompts("toy", "heldout", 100, seed=4)[:n_prompts]
    images = [gen.generate([p] * 4, [50_000 + 4 * k + s for s in range(4)], version=BASE)[0]
              for k, p in enumerate(prompts)]
    verdicts = [(k, a, b, rater(images[k][a], images[k][b], p)) for k, p in enumerate(prompts) for a, b in PAIRS]
    return HeldOut(prompts, images, [v for v in verdicts if v[3] != "tie"][:max_pairs], rater)
