"""Studio settings: typed, with defaults for a laptop and overrides from environment variables (Spaces)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default, cast=str):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return cast(raw)


@dataclass
class StudioSettings:
    model: str = "data/models/toy-lcm"  # RLCM_MODEL: diffusers LCM directory or hub id
    lcm_lora: str | None = None  # RLCM_LCM_LORA: SD-1.5 base + this LCM-LoRA instead of an LCM
    clip: str = "data/models/toy-clip"  # RLCM_CLIP: reward-model backbone (directory or open_clip name)
    clip_pretrained: str | None = None  # RLCM_CLIP_PRETRAINED: e.g. "openai" for a real CLIP
    data_dir: Path = Path("runs/studio")  # RLCM_DATA_DIR: database, images, rounds (local disk)
    backup_dir: str | None = None  # RLCM_BACKUP_DIR: mounted bucket path for snapshots
    backup_repo: str | None = None  # RLCM_BACKUP_REPO: Hub dataset repo for snapshots (needs HF_TOKEN)
    snapshot_every_s: int = 600  # RLCM_SNAPSHOT_EVERY: seconds between snapshots (0: off)
    admin_password: str = ""  # RLCM_ADMIN_PASSWORD: empty -> a random one printed at start
    admin_users: tuple[str, ...] = ()  # RLCM_ADMINS: comma-separated Hugging Face usernames (on a Space)
    rating: str = "named"  # RLCM_RATING: "named" (raters type a name) or "open" (anonymous)
    prompt_set: str = "toy"  # RLCM_PROMPTS: toy | simple_animals | imagenet_animals | a file
    steps: int = 4  # RLCM_STEPS: LCM inference steps
    guidance: float = 8.0  # RLCM_GUIDANCE
    round_epochs: int = 12  # RLCM_ROUND_EPOCHS: RLCM epochs per fine-tune round
    # RLCM_ALIGNMENT_GUARD: rounds optimise reward model + this x CLIP prompt score (x100); 0.2 kept prompt
    # fidelity (+1.0 pts) while the oracle preferred 89% of tuned samples (bench/live_loop.py; 0.05: -8.9 pts)
    alignment_guard: float = 0.2
    kl_coef: float = 0.0  # RLCM_KL: per-step KL anchor to the base model in rounds (RLCMConfig.kl_coef)
    kl_units: str = "action"  # RLCM_KL_UNITS: action | x0 (RLCMConfig.kl_units)
    round_prompts: int = 8  # prompts per RLCM epoch (x4 images each)
    auto_round_every: int = 30  # RLCM_AUTO_ROUND: start a round every N new labels (0: off)
    queue_size: int = 6  # pre-generated pairs kept ready
    earlier_fraction: float = 0.25  # share of pairs that pit the current generator against an earlier one
    pair_candidates: int = 4  # seeds drawn per queued pair once a reward model exists; its least certain pair is shown
    compare_prompts: int = 8  # fixed prompts of the Compare tab
    # A finished round is a candidate until people's A/B votes promote or reject it (studio.gate.GateRule)
    ab_fraction: float = 0.5  # RLCM_AB_FRACTION: share of pairs showing a pending candidate against the served version
    gate_confidence: float = 0.95  # RLCM_GATE_CONFIDENCE: posterior probability needed to promote or reject
    gate_min_votes: int = 6  # A/B votes before any decision
    gate_max_votes: int = 40  # undecided after this many A/B votes: rejected as inconclusive
    device: str | None = None  # RLCM_DEVICE: None picks cuda when present
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides) -> "StudioSettings":
        s = cls(
            model=_env("RLCM_MODEL", cls.model), lcm_lora=_env("RLCM_LCM_LORA", None),
            clip=_env("RLCM_CLIP", cls.clip), clip_pretrained=_env("RLCM_CLIP_PRETRAINED", None),
            data_dir=Path(_env("RLCM_DATA_DIR", str(cls.data_dir))), backup_dir=_env("RLCM_BACKUP_DIR", None),
            backup_repo=_env("RLCM_BACKUP_REPO", None),
            snapshot_every_s=_env("RLCM_SNAPSHOT_EVERY", cls.snapshot_every_s, int),
            admin_password=_env("RLCM_ADMIN_PASSWORD", ""),
            admin_users=tuple(u.strip() for u in _env("RLCM_ADMINS", "").split(",") if u.strip()),
            rating=_env("RLCM_RATING", cls.rating), prompt_set=_env("RLCM_PROMPTS", cls.prompt_set),
            steps=_env("RLCM_STEPS", cls.steps, int), guidance=_env("RLCM_GUIDANCE", cls.guidance, float),
            alignment_guard=_env("RLCM_ALIGNMENT_GUARD", cls.alignment_guard, float),
            kl_coef=_env("RLCM_KL", cls.kl_coef, float), kl_units=_env("RLCM_KL_UNITS", cls.kl_units),
            round_epochs=_env("RLCM_ROUND_EPOCHS", cls.round_epochs, int),
            auto_round_every=_env("RLCM_AUTO_ROUND", cls.auto_round_every, int),
            ab_fraction=_env("RLCM_AB_FRACTION", cls.ab_fraction, float),
            gate_confidence=_env("RLCM_GATE_CONFIDENCE", cls.gate_confidence, float),
            device=_env("RLCM_DEVICE", None),
        )
        for k, v in overrides.items():
            setattr(s, k, v)
        s.validate()
        if not s.admin_password:
            s.admin_password = secrets.token_urlsafe(9)
            print(f"RLCM Studio admin password (set RLCM_ADMIN_PASSWORD to choose one): {s.admin_password}")
        return s

    def validate(self) -> None:
        if self.rating not in ("named", "open"):
            raise ValueError(f"rating {self.rating!r}; valid: named, open")
        if not 2 <= self.steps <= 16:
            raise ValueError("steps must be between 2 and 16 (the last LCM step adds no noise)")
        if self.alignment_guard < 0 or self.kl_coef < 0:
            raise ValueError("alignment_guard and kl_coef must be >= 0")
        from rlcm.policy import KL_UNITS

        if self.kl_units not in KL_UNITS:  # checked here too, so a bad RLCM_KL_UNITS fails at start-up
            raise ValueError(f"kl_units {self.kl_units!r}; valid: {', '.join(KL_UNITS)}")
        if not 0 <= self.ab_fraction <= 1:
            raise ValueError("ab_fraction must be between 0 and 1")
        self.gate_rule()  # raises ValueError for an impossible rule
        if self.round_epochs < 1 or self.auto_round_every < 0 or self.queue_size < 1:
            raise ValueError("round_epochs and queue_size must be >= 1, auto_round_every >= 0")

    def gate_rule(self):
        from .gate import GateRule

        return GateRule(confidence=self.gate_confidence, min_votes=self.gate_min_votes, max_votes=self.gate_max_votes)

    @property
    def on_space(self) -> bool:
        return bool(os.environ.get("SPACE_ID"))
