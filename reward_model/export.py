"""Saving a reward model others can load: `model.safetensors`, `config.json`, a `README.md` card, and a zip of them.

Loading reads safetensors only (never pickle), checks the config and every tensor shape, and checks
that the CLIP backbone has the weights the model was fitted on.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from .head import EnsembleHead
from .model import FORMAT, FORMAT_VERSION, ModelConfig, RewardModel

FILES = ("model.safetensors", "config.json", "README.md")
REQUIRED = {"version": str, "backbone": dict, "embed_dim": int, "hidden": int, "ensemble_size": int,
            "format": str, "format_version": int}


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "–" if v is None else str(v)


def model_card(config: ModelConfig, metrics: dict) -> str:
    m = metrics or {}
    rows = [("held-out pairwise accuracy (ties excluded)", m.get("accuracy")), ("held-out log-loss", m.get("log_loss")),
            ("held-out pairs", m.get("n_test")), ("training pairs", m.get("n_train")),
            ("early-stopping pairs", m.get("n_val")), ("labelled pairs in all", m.get("n_pairs")),
            ("raters", m.get("n_raters")), ("rater self-agreement on repeated pairs", m.get("self_agreement")),
            ("repeat judgements", m.get("repeat_judgements"))]
    table = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in rows)
    acc, n = m.get("accuracy"), m.get("n_test") or 0
    if isinstance(acc, float) and n:
        table += f"\n| standard error of that accuracy (binomial, {n} pairs) | {(acc * (1 - acc) / n) ** 0.5:.3f} |"
    b = config.backbone
    return f"""---
tags: [reward-model, rlcm, preference-learning]
library_name: rlcm-studio
---
# RLCM Studio reward model `{config.version}`

Predicts which of two images of one prompt a rater prefers. A frozen CLIP backbone
(`{b.get('name')}` from `{b.get('source')}`, weights fingerprint `{b.get('fingerprint')}`) embeds image and
prompt; an ensemble of {config.ensemble_size} MLP heads (hidden width {config.hidden}) on
{config.features} with image features `{config.image_features}`
({(config.image_dim or config.embed_dim) + 2 * config.embed_dim} inputs) gives a reward each, trained with the Bradley–Terry loss
(ties as 1/2) on bootstrap resamples, with early stopping on a held-out split.

## Data and held-out metrics

Metrics are on pairs never used for training or early stopping (split by pair).

| | |
|---|---|
{table}

For scale: published reward models reach about 65–70% held-out pairwise accuracy on real human
preferences (ImageReward, PickScore). Numbers on a few hundred pairs from one rater say little about
other raters.

## Use

```python
import reward_model
rm = reward_model.load("path/to/this/dir_or.zip")   # loads the backbone from config.json, or pass clip=...
rewards = rm.score(images, prompts)                  # (N,) tensor, higher is preferred
spread = rm.uncertainty(images, prompts)             # (N,) std across the ensemble
```

Files: `model.safetensors` (head weights and feature standardisation), `config.json`
(format `{config.format}` v{config.format_version}), this card.
"""


def export(model: RewardModel, directory: str | Path, metrics: dict | None = None) -> tuple[Path, Path]:
    """Write the model to `directory` and `directory.zip`; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metrics = metrics if metrics is not None else model.metrics
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
              directory / "model.safetensors", metadata={"format": FORMAT, "version": model.version})
    (directory / "config.json").write_text(json.dumps({**model.config.to_dict(), "metrics": metrics}, indent=2,
                                                      default=str))
    (directory / "README.md").write_text(model_card(model.config, metrics))
    zip_path = directory.with_name(directory.name + ".zip")
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in FILES:
            z.write(directory / name, arcname=name)
    tmp.replace(zip_path)
    return directory, zip_path


def _read(path: Path) -> tuple[dict, bytes]:
    if path.is_dir():
        missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
        if missing:
            raise ValueError(f"{path} is not a reward model directory: missing {missing}")
        return json.loads((path / "config.json").read_text()), (path / "model.safetensors").read_bytes()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = [f for f in ("config.json", "model.safetensors") if f not in names]
            if missing:
                raise ValueError(f"{path} is not a reward model zip: missing {missing} at its top level")
            return json.loads(z.read("config.json")), z.read("model.safetensors")
    raise ValueError(f"{path} is neither a reward model directory nor a zip of one")


def check_config(cfg: dict) -> ModelConfig:
    """A `ModelConfig` from parsed config.json, or ValueError saying which key is missing or wrong."""
    if not isinstance(cfg, dict):
        raise ValueError("config.json must hold an object")
    for key, kind in REQUIRED.items():
        if key not in cfg:
            raise ValueError(f"config.json lacks {key!r}; required keys: {', '.join(REQUIRED)}")
        if not isinstance(cfg[key], kind) or isinstance(cfg[key], bool):
            raise ValueError(f"config.json {key!r} must be {kind.__name__}, got {cfg[key]!r}")
    if cfg["format"] != FORMAT or cfg["format_version"] != FORMAT_VERSION:
        raise ValueError(f"config.json is format {cfg['format']!r} v{cfg['format_version']}; "
                         f"this code reads {FORMAT!r} v{FORMAT_VERSION}")
    if "fingerprint" not in cfg["backbone"] or "source" not in cfg["backbone"]:
        raise ValueError("config.json backbone must record 'source' and 'fingerprint'")
    known = set(ModelConfig.__dataclass_fields__)
    return ModelConfig(**{k: v for k, v in cfg.items() if k in known})


def load(path: str | Path, clip=None, device: str = "cpu") -> RewardModel:
    """Load an exported reward model (directory or zip).

    Without `clip`, the backbone is loaded with `rlcm.clip.load_clip` from the source in config.json.
    Either way its weights must match the recorded fingerprint.
    """
    raw_cfg, blob = _read(Path(path))
    cfg = check_config(raw_cfg)
    try:
        tensors = load_bytes(blob)
    except Exception as e:
        raise ValueError(f"model.safetensors in {path} does not load: {e}") from None
    head = EnsembleHead(cfg.embed_dim, cfg.hidden, cfg.ensemble_size, image_dim=cfg.image_dim)
    want = head.shapes
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != got:
        raise ValueError(f"model.safetensors does not match config.json: expected tensors {want}, found {got}")
    head.load_state_dict({k: v.float() for k, v in tensors.items()})
    if clip is None:
        from rlcm.clip import load_clip

        b = cfg.backbone
        try:
            clip = load_clip(b["source"], device=device, pretrained=b.get("pretrained"))
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"cannot load the backbone {b['source']!r} recorded in config.json ({e}); "
                             "pass clip=load_clip(...) yourself") from None
    model = RewardModel(clip, head, cfg, raw_cfg.get("metrics"))
    model.check_backbone(clip)
    return model.to(device)


def push_to_hub(directory: str | Path, repo_id: str, token: str | None = None, private: bool = True) -> str:
    """Upload an exported directory to a Hugging Face model repo; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                             allow_patterns=list(FILES), commit_message="Upload RLCM Studio reward model")
    return str(getattr(info, "commit_url", info))
