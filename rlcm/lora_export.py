"""A tuned LoRA as a folder diffusers alone loads with `pipe.load_lora_weights(dir)`, with a model card.

The folder holds `pytorch_lora_weights.safetensors` exactly as training saved it (diffusers key names, with
the adapter metadata, so lora_alpha survives: without it diffusers assumes alpha == r and rescales) and a
`README.md` naming the base model, the reward it was tuned for, the rounds behind it and people's win rate.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS = "pytorch_lora_weights.safetensors"  # the name `load_lora_weights(dir)` looks for
FILES = (WEIGHTS, "README.md")


@dataclass
class LoraCard:
    """What the card says beyond the weights."""

    base_model: str  # the pipeline it was tuned on: a Hub id, a shipped toy model name, or a path
    reward: str  # what it was tuned for, e.g. "preference reward model 20261126-… (+ 0.2 x CLIP alignment)"
    rounds: list[int] = field(default_factory=list)  # the studio rounds behind it, each continuing the last
    win_rate: float | None = None  # share of people's A/B votes for this adapter over the base (ties as half)
    win_votes: int | None = None  # votes behind that rate
    win_ci: tuple[float, float] | None = None  # 95% interval of the win rate
    steps: int | None = None  # LCM steps it was tuned and judged at
    guidance: float | None = None  # guidance scale it was tuned and judged at
    license: str = "unknown"  # a Hub license id; the base model's license binds it too
    datasets: list[str] = field(default_factory=list)  # Hub datasets of the preferences behind its reward


def find_weights(round_or_lora_dir: str | Path) -> Path:
    """The diffusers-format LoRA file of a studio round directory (`<round>/lora/`) or of a LoRA directory."""
    d = Path(round_or_lora_dir)
    for candidate in (d / WEIGHTS, d / "lora" / WEIGHTS):
        if candidate.is_file():
            return candidate
    raise ValueError(f"no {WEIGHTS} in {d} or {d / 'lora'}; a finished round saves its adapter there")


def _check_weights(path: Path) -> dict:
    """The adapter metadata of a diffusers LoRA file; ValueError for anything else."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys, meta = list(f.keys()), f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{path} is not a safetensors file: {e}") from None
    if not keys or not all(k.startswith("unet.") and ".lora" in k for k in keys):
        raise ValueError(f"{path} does not hold diffusers UNet LoRA weights (keys like 'unet.….lora_A.weight')")
    raw = json.loads(meta.get("lora_adapter_metadata") or "{}")  # diffusers keys it "unet.r", "unet.lora_alpha", ...
    return {k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith("unet.")}


def _base_repo(base: str) -> str | None:
    """A Hub id for the card's `base_model`, when the base is one (not a local path or a toy name)."""
    parts = base.split("/")
    return base if len(parts) == 2 and all(parts) and not Path(base).exists() else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def lora_card(card: LoraCard, adapter: dict) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from .paths import toy_model_name

    base = toy_model_name(card.base_model) or card.base_model
    repo = _base_repo(base)
    data = ModelCardData(license=card.license, base_model=repo, datasets=card.datasets or None, library_name="diffusers",
                         pipeline_tag="text-to-image", tags=["lora", "diffusers", "text-to-image", "lcm", "rlcm",
                                                             "rlhf"])
    if card.win_rate is None:
        people = "not measured: no A/B votes between this adapter and the base yet"
    else:
        ci = f", 95% interval {_pct(card.win_ci[0])}–{_pct(card.win_ci[1])}" if card.win_ci else ""
        people = f"{_pct(card.win_rate)} of people's A/B votes over the base ({card.win_votes or '?'} votes{ci})"
    sampling = ", ".join(s for s in (f"{card.steps} steps" if card.steps else "",
                                     f"guidance {card.guidance:g}" if card.guidance is not None else "") if s)
    lora = ", ".join(f"{k} {adapter[k]}" for k in ("r", "lora_alpha") if k in adapter)
    if repo:
        base_line = f'base = "{repo}"'
    elif toy_model_name(card.base_model):
        base_line = f'import rlcm.paths\nbase = rlcm.paths.toy_model("{base}")  # ships with the rlcm-studio package'
    else:
        base_line = f'base = "{base}"  # the pipeline it was tuned on'
    body = f"""
# RLCM LoRA for `{base}`

A LoRA ({lora or 'rank as saved'}) on the UNet of `{base}`, tuned with RLCM (Oertell et al., 2024:
reinforcement learning for latent consistency models) against {card.reward}.

| | |
|---|---|
| base model | `{base}` |
| reward | {card.reward} |
| rounds | {', '.join(map(str, card.rounds)) or '–'} (each round continues the previous adapter) |
| people's win rate | {people} |
| sampling | {sampling or '–'} |

## Use

```python
from diffusers import DiffusionPipeline

{base_line}
pipe = DiffusionPipeline.from_pretrained(base)
pipe.load_lora_weights("path/or/hub-repo-of-this-folder")
image = pipe("a prompt", num_inference_steps={card.steps or 4}{f', guidance_scale={card.guidance:g}' if card.guidance is not None else ''}).images[0]
```

`{WEIGHTS}` carries the adapter metadata (lora_alpha), so diffusers applies the trained scale.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def export_lora(round_dir: str | Path, out_dir: str | Path, card: LoraCard) -> Path:
    """Write `out_dir/{pytorch_lora_weights.safetensors, README.md}` from a round (or LoRA) directory; returns out_dir."""
    src = find_weights(round_dir)
    adapter = _check_weights(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{WEIGHTS}.tmp"
    shutil.copyfile(src, tmp)
    tmp.replace(out / WEIGHTS)
    (out / "README.md").write_text(lora_card(card, adapter))
    return out
