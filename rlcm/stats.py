"""Per-prompt advantage normalisation with a running buffer (DDPO/RLCM's stat tracker)."""

from __future__ import annotations

from collections import deque

import numpy as np


class PerPromptStatTracker:
    """Normalise each reward by its prompt's recent rewards; below `min_count` use the batch's statistics."""

    def __init__(self, buffer_size: int = 32, min_count: int = 16, scale: str = "prompt"):
        if scale not in ("prompt", "batch"):
            raise ValueError(f"scale must be 'prompt' or 'batch', not {scale!r}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        # "batch": centred on the prompt's mean, divided by one spread for the whole batch, so a prompt whose images
        # the reward barely tells apart pushes less than one where it sees a real difference (per-prompt scaling
        # blows both up to unit size)
        self.scale = scale
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        """Add the rewards to their prompts' buffers; (N,) advantages (r - mean) / (std + 1e-6) against the prompt's
        buffer (the last `buffer_size` rewards), or the whole batch while the buffer holds fewer than `min_count`.
        With scale "batch" the std is that of all the batch's centred rewards instead."""
        prompts_arr = np.array(prompts, dtype=object)
        rewards = np.asarray(rewards, dtype=np.float64)
        adv = np.empty_like(rewards)
        for p in dict.fromkeys(prompts):
            mask = prompts_arr == p
            buf = self.buffers.setdefault(p, deque(maxlen=self.buffer_size))
            buf.extend(rewards[mask].tolist())
            ref = np.array(buf) if len(buf) >= self.min_count else rewards
            adv[mask] = rewards[mask] - ref.mean()
            if self.scale == "prompt":
                adv[mask] /= ref.std() + 1e-6
        if self.scale == "batch":
            adv /= np.sqrt(np.mean(adv ** 2)) + 1e-6
        return adv

    def state_dict(self) -> dict:
        return {p: list(b) for p, b in self.buffers.items()}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {p: deque(v, maxlen=self.buffer_size) for p, v in state.items()}
