"""Studio settings: typed, with defaults for a laptop, overrides from environment variables (Spaces), every
number checked finite and in range, and the values an admin edits saved to `data_dir/settings.json`."""

from __future__ import annotations

import json
import math
import os
import secrets
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from .gate import GateRule

ROUND_IMAGES_PER_PROMPT = 4  # images sampled per prompt in a round: per-prompt advantages compare these
SETTINGS_FILE = "settings.json"  # under data_dir: the admin's edits, which outlive a restart
# what an admin may change while the studio runs (the Settings tab and its API); these persist
EDITABLE = ("steps", "guidance", "round_epochs", "auto_round_every", "alignment_guard", "kl_coef", "ab_fraction",
            "swap_guard")
# every numeric setting: (int or float, lowest, highest), both ends allowed
RANGES: dict[str, tuple[type, float, float]] = {
    # backups
    "snapshot_every_s": (int, 0, 7 * 86_400),
    "snapshot_keep": (int, 1, 1000),
    "repo_backup_every_min": (int, 1, 24 * 60),
    # sampling
    "steps": (int, 2, 16),  # LCM inference steps: the last adds no noise, so 1 step has nothing to train
    "guidance": (float, 0.0, 30.0),
    # rounds
    "round_epochs": (int, 1, 1000),
    "alignment_guard": (float, 0.0, 100.0),
    "swap_guard": (float, 0.0, 100.0),
    "kl_coef": (float, 0.0, 1000.0),
    "round_prompts": (int, 1, 256),
    "round_train_prompts": (int, 1, 100_000),
    "round_lr": (float, 1e-6, 1e-1),
    "round_lr_warmup": (int, 0, 1000),
    "round_batch": (int, 0, 1024),
    "auto_round_every": (int, 0, 1_000_000),
    "auto_round_first": (int, 8, 1_000_000),  # the reward model's fit needs 8 labelled pairs
    "round_epochs_base_factor": (float, 0.1, 100.0),
    "round_rm_refresh": (int, 0, 1_000_000),
    "round_seed": (int, 0, 1_000_000),
    # their checks
    "round_eval_prompts": (int, 1, 1024),
    "confirm_prompts": (int, 0, 1024),  # 0: no confirmation on new prompts
    # the Rate queue
    "queue_size": (int, 1, 64),
    "earlier_fraction": (float, 0.0, 1.0),
    "pair_candidates": (int, 2, 64),
    "ab_draws": (int, 1, 64),
    "compare_prompts": (int, 1, 64),
    # the gate
    "ab_fraction": (float, 0.0, 1.0),
    "gate_confidence": (float, 0.0, 1.0),
    "gate_min_votes": (int, 1, 100_000),
    "gate_max_votes": (int, 1, 100_000),
    "gate_max_decisive": (int, 1, 100_000),
    # limits
    "max_upload_mb": (int, 1, 10_240),
    "keep_unrated": (int, 0, 10_000_000),
}


def text_choices() -> dict[str, tuple[str, ...]]:
    """The text settings with a fixed set of values, and those values (`validate` checks them)."""
    from rlcm.policy import KL_UNITS  # torch: imported when settings are checked, not when this module is

    return {"rating": ("named", "open"), "kl_units": KL_UNITS}


def coerce(name: str, value):
    """`value` as the type of setting `name`, or ValueError saying what is allowed.

    Accepts numbers and numeric text (the UI sends floats, the environment text); refuses bools, NaN,
    infinities, fractions for whole-number settings, and anything out of range.
    """
    kind, lo, hi = RANGES[name]
    what = "a whole number" if kind is int else "a finite number"
    raw = value
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float or "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise ValueError(f"{name} must be {what} in [{lo}, {hi}], got {raw[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {what} in [{lo}, {hi}], got {str(raw)[:40]!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be {what} in [{lo}, {hi}], got {value}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be {what} in [{lo}, {hi}], got {value}")
        value = int(value)
    else:
        value = float(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be {what} in [{lo}, {hi}], got {str(raw)[:40]}")
    return value


def _env(name: str, default, cast=str):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw[:40]!r} is not a valid {cast.__name__}") from None


@dataclass
class StudioSettings:
    model: str = "toy-lcm"  # RLCM_MODEL: diffusers LCM directory or hub id (default: the shipped toy LCM)
    lcm_lora: str | None = None  # RLCM_LCM_LORA: SD-1.5 base + this LCM-LoRA instead of an LCM
    clip: str = "toy-clip"  # RLCM_CLIP: reward-model backbone (directory, open_clip name, hf-hub: id)
    clip_pretrained: str | None = None  # RLCM_CLIP_PRETRAINED: e.g. "openai" for a real CLIP
    data_dir: Path = Path("runs/studio")  # RLCM_DATA_DIR: database, images, rounds (local disk)
    backup_dir: str | None = None  # RLCM_BACKUP_DIR: mounted bucket path for snapshots
    backup_repo: str | None = None  # RLCM_BACKUP_REPO: Hub dataset repo for snapshots (needs HF_TOKEN)
    snapshot_every_s: int = 600  # RLCM_SNAPSHOT_EVERY: seconds between snapshots (0: off)
    snapshot_keep: int = 5  # RLCM_SNAPSHOT_KEEP: snapshots kept in backup_dir (older ones are deleted)
    repo_backup_every_min: int = 15  # RLCM_BACKUP_REPO_EVERY: minutes between commits to backup_repo
    admin_password: str = ""  # RLCM_ADMIN_PASSWORD: empty -> a random one printed at start
    admin_users: tuple[str, ...] = ()  # RLCM_ADMINS: comma-separated Hugging Face usernames (on a Space)
    rating: str = "named"  # RLCM_RATING: "named" (raters type a name) or "open" (anonymous)
    prompt_set: str = "toy"  # RLCM_PROMPTS: toy | simple_animals | imagenet_animals | a file
    steps: int = 4  # RLCM_STEPS: LCM inference steps
    guidance: float = 8.0  # RLCM_GUIDANCE
    # RLCM_ROUND_EPOCHS: RLCM epochs per fine-tune round (one optimiser step each). Short rounds, chained through
    # people's votes: one round of 24 from a 40-label warm_colours reward model won 0.63 / 0.61 / 0.62 / 0.66 at
    # epochs 6 / 12 / 18 / 24 while fidelity on new prompts fell -0.1 / -2.4 / -5.7 / -10.2 points (big_centred:
    # 0.63 -> 0.96, +2.7 -> -8.4); live loop at 300 labels, 8 epochs: big_centred served 0.66 (24: base, every
    # round rejected), warm_colours 0.80 after 3 promoted rounds (24: 0.81 after 2). RESULTS, "Round length"
    round_epochs: int = 8
    # RLCM_ROUND_EPOCHS_BASE_FACTOR: a round that starts from the base model trains round_epochs x this. From 16
    # training prompts 12 epochs kept round 1 training until about label 90 on a 2-core Xeon (the base still served at
    # label 100 in 11 of 12 runs, tables 28b-31), so it was 1.0. From 256 prompts a round keeps more fidelity, and on
    # the EPYC 12 epochs train in 77-84 s: six seeded round 1s won 0.733 after 12 epochs against 0.670 after 8 on 512
    # held-out images (the keeper steps back where fidelity fails), and in the live loop round 1 was served from
    # labels 71 and 80 (warm_colours 0.844 at 100 labels). RESULTS, "stronger round 1s" and "round 1 of 12 epochs"
    round_epochs_base_factor: float = 1.5
    # RLCM_ROUND_SEED: a round's seed (its training prompts and sampling noise) is its number + 1000 x this. Round 1
    # from one reward model won 0.53-0.90 over three seeds (RESULTS, "stronger round 1s"); with this fixed, two live
    # loops of one rater share round 1 whenever their first labels give the same reward model
    round_seed: int = 0
    # RLCM_ROUND_RM_REFRESH: once this many labels arrived since a running round's reward model was fitted, the
    # round refits it between two epochs and trains the rest on the new one (0: off, the default). Each epoch
    # samples and scores its own images, so the update stays on-policy; only the per-prompt statistics start over.
    # One round from the base, 12 epochs, the same seeds (bench/round_probe.py --switch): big_centred's 10-label
    # model won 0.67 alone and 0.80 refitted at 25 / 40 / 55 labels; warm_colours' 15-label one 0.66 and 0.68. But
    # in the live loop at 15 (runs/table20, big_centred, one run) every round of 300 labels was rejected for prompt
    # fidelity (table19 without refits: 0.906): a model refitted on more labels pushes the later epochs harder
    # (RESULTS, "Round probe: refitting the reward model mid-round" and the table20 run below it)
    round_rm_refresh: int = 0
    # RLCM_ALIGNMENT_GUARD: rounds optimise reward model + w x CLIP prompt score (x100), w chosen so that the
    # guard's within-pair differences on the last rated pairs are this share of the reward model's
    # (rlcm.rewards.relative_weight). Toy, warm_colours, 30 labels: an absolute 0.2 outweighed the reward
    # model 2:1 and the round won 0.51 under the oracle; relative 0.25: 0.65, fidelity +1.0 pts (RESULTS, Round probe)
    alignment_guard: float = 0.25
    # RLCM_SWAP_GUARD: rounds also add this x rlcm.rewards.swap_hinge (absolute): a penalty, zero unless a
    # one-word change of the prompt ("small" -> "large", one colour for another) fits the image better; 0: off.
    # The plain guard above rewards what the prompt leaves open too, so a taste for bigger objects outbids it on
    # "small" prompts: big_centred's chained rounds lost the size attribute and failed the fidelity checks. One
    # chained round, same seeds: epoch 8 won 0.99 at -5.0 points of fidelity without it, 0.88 at -0.7 with 0.2.
    # Live loop, one run each on one machine (runs/s38): big_centred served 0.72 / 0.90 at 100 / 300 labels
    # with it against 0.50 / 0.57 without; warm_colours 0.50 / 0.81 against 0.55 / 0.83 (RESULTS, "a swap hinge
    # in the alignment guard" and the live-loop table after it)
    swap_guard: float = 0.2
    kl_coef: float = 0.0  # RLCM_KL: per-step KL anchor to the base model in rounds (RLCMConfig.kl_coef)
    kl_units: str = "action"  # RLCM_KL_UNITS: action | x0 (RLCMConfig.kl_units)
    # RLCM_ROUND_PROMPTS: prompts per RLCM epoch (x4 images each; one optimiser step per epoch). A larger batch
    # steers each step by the reward model more than by sampling noise, which costs prompt fidelity. One round,
    # the same images in all (bench/round_probe.py, 20-label big_centred reward model): 8 prompts x 24 epochs
    # won 0.96 at -8.4 points of fidelity on new prompts, 16 x 12 won 0.81 at -0.2, 32 x 6 0.77 at +1.3;
    # 16 x 8 won 0.69 at +3.5 (8 x 12: 0.73 at -3.9). 40-label warm_colours: 16 x 8 won 0.64 at -3.7,
    # 8 x 12 0.61 at -2.4 (no gain there). RESULTS, "Round length"
    round_prompts: int = 16
    # RLCM_ROUND_TRAIN_PROMPTS: distinct toy prompts a round draws its round_prompts per epoch from (a real prompt set
    # is used whole). With 16, as before, a round's 8 epochs saw each prompt 8 times and its taste reached held-out
    # prompts less: over 7 seeded round 1s (bench/round_probe.py --pool --seed and the live loop's), 256 won 0.667
    # against 0.591 on 512 held-out images with 3.1 points more fidelity; one of the 7 went the other way by 0.18
    # (RESULTS, "Round probe: distinct training prompts")
    round_train_prompts: int = 256
    # RLCM_ROUND_EVAL_PROMPTS: held-out prompts (1 seed) of a round's keeper evaluations. The keeper hands over an
    # epoch a standard error above -2 points of fidelity: about -0.7 on 128 images, -1.0 on 256. A chained
    # big_centred round won 0.86-0.88 at -0.4 to -1.0 points after 4 epochs, and at 128 none of tables 28b, 30 and
    # 32f8 handed one over (RESULTS, "why big_centred's chained rounds lose prompt fidelity"). At 256, round 1's
    # training stage took 14-22 s longer, and in one live-loop run per learnable taste the mean served win rate at
    # 300 labels went from 0.716 to 0.748 (RESULTS, "the keeper on 256 prompts", runs/s37)
    round_eval_prompts: int = 256
    # toy prompt set: new held-out prompts (x2 seeds, drawn anew for each round) on which a finished round's
    # fidelity is confirmed against the base before it is promoted (studio.checks.confirm_reason); 0: off. It looks
    # at 128 images before any vote, then (on trial, while unsettled) at 256 and 512. 256 images (standard error
    # ~1.3 points, clustered by prompt) passed warm_colours' round 1 at -0.6 that measured -2.5 on 930 and -4.3,
    # -4.1 on two other 256-image draws; 512 (~0.9) make the change pass above about -1.1. Fewer images make the
    # check stricter
    confirm_prompts: int = 256
    # RLCM_ROUND_LR: LoRA learning rate of rounds (one AdamW step per epoch). Toy, warm_colours, 30 labels,
    # 12 epochs: 5e-4 left images unchanged to the oracle (win 0.50), 3e-3 won 0.64, 1e-2 collapsed fidelity
    round_lr: float = 3e-3
    # RLCM_ROUND_LR_WARMUP: epochs over which a round that starts from an earlier round's LoRA ramps its learning
    # rate up to round_lr (rlcm.trainer.RLCMConfig.lr_warmup_epochs; rounds from the base need none: their first
    # step moves only B). In runs/table17, 10 of the 14 rounds of the learnable tastes that started from an earlier
    # round were rejected for prompt fidelity, none of the 4 from the base; one chained round from the same LoRA
    # and reward model, 96 held-out images: first step -2.9 points without warm-up, -1.1 with 4 epochs of it,
    # after 4 epochs -2.7 against +0.0, at a higher reward (RESULTS, "Round probe: learning-rate warm-up")
    round_lr_warmup: int = 4
    # RLCM_ROUND_BATCH: images per forward pass of a round, sampling and training (the optimiser step sees the same
    # mean gradient either way). 0: a whole epoch at once on the shipped toy LCM (2-core CPU: an epoch of 64 images
    # and its evaluation in 6.5 s instead of 8.4 s with 16; RESULTS, "Round batch size"), 16 for any other model
    # (SD-1.5's memory)
    round_batch: int = 0
    auto_round_every: int = 20  # RLCM_AUTO_ROUND: start a round every N new labels (0: off)
    # RLCM_AUTO_ROUND_FIRST: a studio without rounds starts its first automatic one at this many labels (then every
    # auto_round_every): on a 2-core CPU round 1 reached its vote only near label 90 when it started at 20-30
    auto_round_first: int = 10
    queue_size: int = 6  # pre-generated pairs kept ready
    earlier_fraction: float = 0.25  # share of pairs that pit the current generator against an earlier one
    pair_candidates: int = 4  # seeds per queued pair: the reward model's least sure pair, before one the most distinct
    # RLCM_AB_DRAWS: prompt-and-seed draws per A/B pair, the one where candidate and served differ most is shown
    # (fewer tied votes: 20-43% of decided trials' votes against 53-80% with 1; RESULTS, tables at 40e9e8c and
    # 88c5e11). Each draw renders both versions: 1 costs 2 images per A/B pair, 4 cost 8 (on SD-1.5 a GPU's seconds)
    ab_draws: int = 4
    compare_prompts: int = 8  # fixed prompts of the Compare tab
    # A finished round is a candidate until people's A/B votes promote or reject it (studio.gate.GateRule)
    ab_fraction: float = 0.75  # RLCM_AB_FRACTION: share of pairs showing a pending candidate against the served version
    # the gate's defaults are GateRule's (one home for the numbers and why they were chosen)
    gate_confidence: float = GateRule.confidence  # RLCM_GATE_CONFIDENCE: posterior probability to promote or reject
    gate_min_votes: int = GateRule.min_votes  # A/B votes before any decision
    # undecided after gate_max_decisive A/B votes that saw a difference or gate_max_votes in all (ties included):
    # rejected as inconclusive. A round trains ahead while its parent is on trial, so a longer trial costs
    # little (why these limits, measured: studio.gate.GateRule)
    gate_max_votes: int = GateRule.max_votes
    gate_max_decisive: int = GateRule.max_decisive
    max_upload_mb: int = 100  # RLCM_MAX_UPLOAD_MB: largest upload accepted (launch(max_file_size=...))
    keep_unrated: int = 1000  # RLCM_KEEP_UNRATED: generated samples nobody rated kept (oldest deleted first)
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
            snapshot_keep=_env("RLCM_SNAPSHOT_KEEP", cls.snapshot_keep, int),
            repo_backup_every_min=_env("RLCM_BACKUP_REPO_EVERY", cls.repo_backup_every_min, int),
            max_upload_mb=_env("RLCM_MAX_UPLOAD_MB", cls.max_upload_mb, int),
            keep_unrated=_env("RLCM_KEEP_UNRATED", cls.keep_unrated, int),
            admin_password=_env("RLCM_ADMIN_PASSWORD", ""),
            admin_users=tuple(u.strip() for u in _env("RLCM_ADMINS", "").split(",") if u.strip()),
            rating=_env("RLCM_RATING", cls.rating), prompt_set=_env("RLCM_PROMPTS", cls.prompt_set),
            steps=_env("RLCM_STEPS", cls.steps, int), guidance=_env("RLCM_GUIDANCE", cls.guidance, float),
            alignment_guard=_env("RLCM_ALIGNMENT_GUARD", cls.alignment_guard, float),
            swap_guard=_env("RLCM_SWAP_GUARD", cls.swap_guard, float),
            kl_coef=_env("RLCM_KL", cls.kl_coef, float), kl_units=_env("RLCM_KL_UNITS", cls.kl_units),
            round_epochs=_env("RLCM_ROUND_EPOCHS", cls.round_epochs, int),
            round_lr=_env("RLCM_ROUND_LR", cls.round_lr, float),
            round_lr_warmup=_env("RLCM_ROUND_LR_WARMUP", cls.round_lr_warmup, int),
            round_epochs_base_factor=_env("RLCM_ROUND_EPOCHS_BASE_FACTOR", cls.round_epochs_base_factor, float),
            round_seed=_env("RLCM_ROUND_SEED", cls.round_seed, int),
            round_rm_refresh=_env("RLCM_ROUND_RM_REFRESH", cls.round_rm_refresh, int),
            round_prompts=_env("RLCM_ROUND_PROMPTS", cls.round_prompts, int),
            round_train_prompts=_env("RLCM_ROUND_TRAIN_PROMPTS", cls.round_train_prompts, int),
            round_eval_prompts=_env("RLCM_ROUND_EVAL_PROMPTS", cls.round_eval_prompts, int),
            round_batch=_env("RLCM_ROUND_BATCH", cls.round_batch, int),
            auto_round_every=_env("RLCM_AUTO_ROUND", cls.auto_round_every, int),
            auto_round_first=_env("RLCM_AUTO_ROUND_FIRST", cls.auto_round_first, int),
            ab_fraction=_env("RLCM_AB_FRACTION", cls.ab_fraction, float),
            ab_draws=_env("RLCM_AB_DRAWS", cls.ab_draws, int),
            gate_confidence=_env("RLCM_GATE_CONFIDENCE", cls.gate_confidence, float),
            device=_env("RLCM_DEVICE", None),
        )
        for k, v in overrides.items():
            setattr(s, k, v)
        s.validate()
        try:  # the admin's saved edits beat the environment; explicit overrides beat both
            s.load_saved(skip=set(overrides))
        except ValueError as e:  # a damaged file must not keep the studio down: set it aside, say so in one line
            bad = s.settings_path.with_name(SETTINGS_FILE + ".invalid")
            os.replace(s.settings_path, bad)
            print(f"RLCM Studio: ignored saved settings ({e}); moved to {bad.name}")
        if not s.admin_password:
            s.admin_password = secrets.token_urlsafe(9)
            print(f"RLCM Studio admin password (set RLCM_ADMIN_PASSWORD to choose one): {s.admin_password}")
        return s

    def validate(self) -> None:
        """ValueError naming the first invalid setting; numbers are checked finite and in `RANGES`."""
        numbers = {name: coerce(name, getattr(self, name)) for name in RANGES}
        for name, valid in text_choices().items():  # a bad RLCM_KL_UNITS fails at start-up, not in a round
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        replace(self, **numbers).gate_rule()  # raises ValueError for an impossible rule
        for name, value in numbers.items():  # all checks passed: store the normalised types (4.0 -> 4)
            setattr(self, name, value)

    def gate_rule(self) -> GateRule:
        return GateRule(confidence=self.gate_confidence, min_votes=self.gate_min_votes,
                        max_decisive=self.gate_max_decisive, max_votes=self.gate_max_votes)

    @property
    def on_space(self) -> bool:
        """Running on a Hugging Face Space, as Gradio decides it (SYSTEM=spaces and SPACE_ID): its OAuth
        login then signs people in for real, and identity comes from it."""
        from gradio.utils import get_space

        return bool(get_space())

    @property
    def round_batch_size(self) -> int:
        """Images per forward pass of a round: the largest divisor of an epoch's images (round_prompts x
        ROUND_IMAGES_PER_PROMPT) that is at most `round_batch` (0: see there), so every minibatch is full."""
        n = self.round_prompts * ROUND_IMAGES_PER_PROMPT
        cap = self.round_batch or (n if self.model == type(self).model else 16)
        return max(d for d in range(1, min(cap, n) + 1) if n % d == 0)

    @property
    def confirms_fidelity(self) -> bool:
        """Finished rounds confirm their prompt fidelity on new prompts (the toy world has a fidelity checker)."""
        return self.prompt_set == "toy" and self.confirm_prompts > 0

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    # ------------------------------------------------------------ editing and persistence

    def editable(self) -> dict:
        return {k: getattr(self, k) for k in EDITABLE}

    def update(self, **values) -> dict:
        """Set some editable values, all or none: each is coerced and checked, then the whole set is validated.

        Returns the editable values. Does not save: call `save()` to make the change outlive a restart.
        """
        bad = sorted(set(values) - set(EDITABLE))
        if bad:
            raise ValueError(f"not editable: {', '.join(bad)}; editable: {', '.join(EDITABLE)}")
        new = {k: coerce(k, v) for k, v in values.items() if v is not None}
        replace(self, **new).validate()  # cross-field rules (the gate rule) on a copy: nothing changes if it fails
        for k, v in new.items():
            setattr(self, k, v)
        return self.editable()

    @property
    def settings_path(self) -> Path:
        return Path(self.data_dir) / SETTINGS_FILE

    def save(self) -> Path:
        """Write the editable values to `data_dir/settings.json` atomically."""
        return write_json(self.settings_path, {"format": 1, "values": self.editable()})

    def load_saved(self, skip: set[str] = frozenset()) -> dict | None:
        """Apply the values saved in `data_dir/settings.json` (except `skip`), validated like `update`.

        Returns what was applied, None without a file; ValueError (nothing applied) for a damaged or invalid one.
        """
        path = self.settings_path
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path.name} is not readable JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != 1 or not isinstance(doc.get("values"), dict):
            raise ValueError(f"{path.name} must hold {{'format': 1, 'values': {{...}}}}")
        values = {k: v for k, v in doc["values"].items() if k not in skip}
        self.update(**values)
        return values


def write_json(path: Path, value: dict) -> Path:
    """Write `value` to `path` atomically: a unique temporary file beside it, flushed to disk, then renamed, so a
    reader or a crash sees the old file or the new one (the studio's small state files: settings, served
    version, reward model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
