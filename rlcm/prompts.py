"""Prompt sets by name, each with a training and a held-out split."""

from __future__ import annotations

from pathlib import Path

from .paths import prompts_dir
from .toy import world

PROMPT_DIR = prompts_dir()  # the checkout's data/prompts, or the installed package's copy
PROMPT_SETS = ("toy", "simple_animals", "imagenet_animals")


def get_prompts(name: str, split: str = "train", n: int | None = None, seed: int = 0) -> list[str]:
    """Prompts of a set. `toy`: captions of training / held-out combinations (default 64 / 256);
    the animal lists (the paper's 45 simple animals and 398 ImageNet animals): every 5th is held out."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; valid: train, heldout")
    if name == "toy":
        return world.prompts(split, n or (64 if split == "train" else 256), seed=seed)
    if name in PROMPT_SETS:
        lines = [s.strip() for s in (PROMPT_DIR / f"{name}.txt").read_text().splitlines() if s.strip()]
        chosen = [p for i, p in enumerate(lines) if (i % 5 == 4) == (split == "heldout")]
        return chosen[:n] if n else chosen
    path = Path(name)
    if path.is_file():  # a user's own prompt file: one per line, every 5th held out
        lines = [s.strip() for s in path.read_text().splitlines() if s.strip()]
        chosen = [p for i, p in enumerate(lines) if (i % 5 == 4) == (split == "heldout")] or lines
        return chosen[:n] if n else chosen
    raise ValueError(f"unknown prompt set {name!r}; valid: {PROMPT_SETS} or a text file with one prompt per line")
