"""Saving a reward model others can load: `model.safetensors`, `config.json`, a `README.md` card, and a zip of them.

`load` takes a directory, a zip or a Hugging Face model repo id, from any working directory: the backbone is
recorded portably (the shipped toy CLIP by name, an `hf-hub:` id, or an open_clip name with its pretrained
tag), with the fingerprint of its weights. Loading reads safetensors only (never pickle), checks the config
and every tensor shape, and checks that the backbone has the weights the model was fitted on.
`RewardModel.save_pretrained` / `from_pretrained` / `push_to_hub` (huggingface_hub's ModelHubMixin) write and
read these same files.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from .head import EnsembleHead
from .model import FORMAT, FORMAT_VERSION, READS_VERSIONS, ModelConfig, RewardModel

FILES = ("model.safetensors", "config.json", "README.md")
REQUIRED = {"version": str, "backbone": dict, "embed_dim": int, "hidden": int, "ensemble_size": int,
            "format": str, "format_version": int}
MAX_BYTES = {"config.json": 1 << 20, "model.safetensors": 1 << 30}  # declared zip member sizes are checked first
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")  # "user/repo" on the Hub


@dataclass
class CardInfo:
    """Model card metadata beyond what the model knows itself; kept in config.json across re-exports."""

    license: str = "unknown"  # a Hub license id ("mit", "apache-2.0", "other", ...); the project sets none yet
    datasets: list[str] = field(default_factory=list)  # Hub dataset repos of the preferences it was fitted on
    base_model: str | None = None  # Hub repo of the backbone; None: derived from the recorded backbone


# ---------------------------------------------------------------- the model card

def base_model_of(backbone: dict) -> str | None:
    """The Hub repo holding the backbone's weights, when the recorded source names one."""
    source, tag = str(backbone.get("source") or ""), backbone.get("pretrained")
    if source.startswith("hf-hub:"):
        return source[len("hf-hub:"):]
    if tag and not os.path.exists(str(tag)):
        import open_clip

        hub = (open_clip.get_pretrained_cfg(source, tag) or {}).get("hf_hub", "")
        return os.path.split(hub)[0] or None  # "org/repo/" or "org/repo/file.bin" -> "org/repo"
    return None


def accuracy_text(m: dict) -> str | None:
    """"0.712 (95% interval 0.660–0.760, n = 300 held-out pairs)"; tolerates exports without the interval."""
    acc = m.get("accuracy")
    if not isinstance(acc, (int, float)):
        return None
    n, ci = m.get("accuracy_n", m.get("n_test")), m.get("accuracy_ci")  # the pairs the accuracy is over (ties out)
    parts = [f"95% Wilson interval {ci[0]:.3f}–{ci[1]:.3f}"] if isinstance(ci, (list, tuple)) and len(ci) == 2 else []
    if n:
        parts.append(f"n = {n} held-out pairs")
    if m.get("accuracy_method"):
        parts.append(m["accuracy_method"])
    text = f"{acc:.3f}" + (f" ({', '.join(parts)})" if parts else "")
    if m.get("better_than_chance") is False:
        text += " — not better than chance"
    return text


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "–" if v is None else str(v)


def model_card(config: ModelConfig, metrics: dict) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    m = metrics or {}
    info = CardInfo(**{k: v for k, v in (config.card or {}).items() if k in CardInfo.__dataclass_fields__})
    b = config.backbone
    base = info.base_model or base_model_of(b)
    acc = accuracy_text(m)
    evals = None
    if acc is not None:
        evals = [EvalResult(task_type="reward-modeling", task_name="pairwise preference", dataset_split="test",
                            dataset_type=info.datasets[0] if info.datasets else "rlcm-studio-preferences",
                            dataset_name=f"held-out pairs ({m.get('accuracy_method') or 'split by pair'})",
                            metric_type="accuracy",
                            metric_value=round(float(m["accuracy"]), 4), metric_name=f"pairwise accuracy {acc}")]
    data = ModelCardData(license=info.license, base_model=base, datasets=info.datasets or None,
                         library_name="rlcm-studio", tags=["reward-model", "rlcm", "preference-learning"],
                         model_name=f"rlcm-studio-reward-model-{config.version}", eval_results=evals)
    rows = [("held-out pairwise accuracy (ties excluded)", acc), ("held-out log-loss", m.get("log_loss")),
            ("held-out pairs", m.get("n_test")), ("training pairs", m.get("n_train")),
            ("early-stopping pairs", m.get("n_val")), ("labelled pairs in all", m.get("n_pairs")),
            ("raters", m.get("n_raters")), ("rater self-agreement on repeated pairs", m.get("self_agreement")),
            ("repeat judgements", m.get("repeat_judgements"))]
    table = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in rows)
    chance = ("\n**Not better than chance on its held-out pairs** (the interval includes 50%): treat its scores as "
              "noise until more pairs are rated.\n" if m.get("better_than_chance") is False else "")
    backbone = f"`{b.get('source')}`" + (f" (pretrained `{b.get('pretrained')}`)" if b.get("pretrained") else "")
    body = f"""
# RLCM Studio reward model `{config.version}`

Predicts which of two images of one prompt a rater prefers. A frozen CLIP backbone {backbone}
(weights fingerprint `{b.get('fingerprint')}`{f', base model `{base}`' if base else ''}) embeds image and
prompt; an ensemble of {config.ensemble_size} MLP heads (hidden width {config.hidden}) on
{config.features} with image features `{config.image_features}`
({(config.image_dim or config.embed_dim) + 2 * config.embed_dim} inputs) gives a reward each, trained with the Bradley–Terry loss
(ties as 1/2) on bootstrap resamples, with early stopping on a held-out split.

## Data and held-out metrics

Metrics are on pairs never used for training or early stopping (split by pair).
{chance}
| | |
|---|---|
{table}

For scale: published reward models reach about 65–70% held-out pairwise accuracy on real human
preferences (ImageReward, PickScore). Numbers on a few hundred pairs from one rater say little about
other raters.

## Use

```python
import reward_model                                   # pip install <rlcm-studio checkout>
rm = reward_model.load("this/repo-or-dir-or.zip")    # fetches the backbone by its recorded name
rewards = rm.score(images, prompts)                  # (N,) tensor, higher is preferred
spread = rm.uncertainty(images, prompts)             # (N,) std across the ensemble
```

`reward_model.load(..., backbone="/local/copy")` overrides where the backbone comes from (its weights must
still match the fingerprint). Files: `model.safetensors` (head weights and feature standardisation),
`config.json` (format `{config.format}` v{config.format_version}), this card.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


# ---------------------------------------------------------------- writing

def write_files(model: RewardModel, directory: str | Path, metrics: dict | None = None,
                card: CardInfo | None = None) -> Path:
    """Write `model.safetensors`, `config.json` and `README.md` into `directory` (`card` replaces the model's)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metrics = metrics if metrics is not None else model.metrics
    config = replace(model.config, card=asdict(card)) if card is not None else model.config
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
              directory / "model.safetensors", metadata={"format": FORMAT, "version": model.version})
    (directory / "config.json").write_text(json.dumps({**config.to_dict(), "metrics": metrics}, indent=2,
                                                      default=str))
    (directory / "README.md").write_text(model_card(config, metrics))
    return directory


def export(model: RewardModel, directory: str | Path, metrics: dict | None = None,
           card: CardInfo | None = None) -> tuple[Path, Path]:
    """Write the model to `directory` and `directory.zip`; returns both paths. `card` is kept in its config.json."""
    directory = write_files(model, directory, metrics, card)
    zip_path = directory.with_name(directory.name + ".zip")
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in FILES:
            z.write(directory / name, arcname=name)
    tmp.replace(zip_path)
    return directory, zip_path


def push_to_hub(directory: str | Path, repo_id: str, token: str | None = None, private: bool = True,
                api=None) -> str:
    """Upload an exported directory to a Hugging Face model repo; returns the commit URL."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    missing = [f for f in FILES if not (Path(directory) / f).is_file()]
    if missing:
        raise ValueError(f"{directory} is not an exported reward model: missing {missing}")
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                             allow_patterns=list(FILES), commit_message="Upload RLCM Studio reward model")
    return str(getattr(info, "commit_url", info))


# ---------------------------------------------------------------- reading

MAX_MEMBERS = 16  # an export holds 3 files; a zip naming more is not one
MAX_TOTAL = 256 << 20  # declared bytes of all members together (a head is a few MB)


def _zip_entries(path: Path) -> int:
    """The entry count in the end-of-central-directory record, read before zipfile parses every entry."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (22 + 65535)))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        raise ValueError(f"{path.name} is not a readable zip (no end-of-central-directory record)")
    return int.from_bytes(tail[at + 10:at + 12], "little")  # 0xFFFF: a ZIP64 archive, far too many for us


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    """A member's bytes, read in chunks and refused as soon as it outgrows its declared size."""
    out = bytearray()
    with z.open(info) as f:
        while chunk := f.read(1 << 20):
            out += chunk
            if len(out) > info.file_size:
                raise ValueError(f"{name} in the zip is larger than it declares ({info.file_size} bytes)")
    return bytes(out)


def _read(path: Path) -> tuple[dict, bytes]:
    """config.json (parsed) and model.safetensors (bytes) from an export directory or zip.

    Sizes are checked before anything is read: a zip's entry count, each member's declared size against
    `MAX_BYTES` and `MAX_TOTAL`, their sum; reading stops at a member's declared size (a zip bomb lies).
    """
    if path.is_dir():
        missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
        if missing:
            raise ValueError(f"{path} is not a reward model directory: missing {missing}")
        for name, limit in MAX_BYTES.items():
            if (path / name).stat().st_size > min(limit, MAX_TOTAL):
                raise ValueError(f"{path.name}/{name} is {(path / name).stat().st_size} bytes; "
                                 f"the limit is {min(limit, MAX_TOTAL)}")
        return json.loads((path / "config.json").read_text()), (path / "model.safetensors").read_bytes()
    if path.is_file() and zipfile.is_zipfile(path):
        entries = _zip_entries(path)
        if entries > MAX_MEMBERS:
            raise ValueError(f"{path.name} holds {entries} entries; a reward model zip holds at most {MAX_MEMBERS}")
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ValueError(f"{path.name} holds {len(infos)} entries; at most {MAX_MEMBERS}")
            by_name = {i.filename: i for i in infos}
            missing = [f for f in ("config.json", "model.safetensors") if f not in by_name]
            if missing:
                raise ValueError(f"{path} is not a reward model zip: missing {missing} at its top level")
            total = sum(i.file_size for i in infos)
            if total > MAX_TOTAL:
                raise ValueError(f"{path.name} declares {total} bytes uncompressed; the limit is {MAX_TOTAL}")
            for i in infos:
                limit = min(MAX_BYTES.get(i.filename, MAX_TOTAL), MAX_TOTAL)
                if i.file_size > limit:
                    raise ValueError(f"{path.name}: {i.filename[:100]!r} declares {i.file_size} bytes; "
                                     f"the limit is {limit}")
            try:
                raw = _read_member(z, by_name["config.json"], "config.json")
                blob = _read_member(z, by_name["model.safetensors"], "model.safetensors")
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:  # torn, bad CRC, odd method
                raise ValueError(f"{path.name} is a damaged zip: {e}") from None
            try:
                return json.loads(raw), blob
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"config.json in {path.name} is not JSON: {e}") from None
    raise ValueError(f"{path} is neither a reward model directory nor a zip of one, nor a Hub repo id")


def _fetch(repo_id: str, **hub) -> Path:
    """The local snapshot of a Hub model repo (from the cache when offline)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="model", allow_patterns=list(FILES), **hub))
    except Exception as e:  # network, auth, missing repo, offline without a cached copy
        raise ValueError(f"{repo_id!r} is no local directory or zip, and fetching it as a Hub repo failed: "
                         f"{type(e).__name__}: {e}") from None


def check_config(cfg: dict) -> ModelConfig:
    """A `ModelConfig` from parsed config.json, or ValueError saying which key is missing or wrong."""
    if not isinstance(cfg, dict):
        raise ValueError("config.json must hold an object")
    for key, kind in REQUIRED.items():
        if key not in cfg:
            raise ValueError(f"config.json lacks {key!r}; required keys: {', '.join(REQUIRED)}")
        if not isinstance(cfg[key], kind) or isinstance(cfg[key], bool):
            raise ValueError(f"config.json {key!r} must be {kind.__name__}, got {cfg[key]!r}")
    if cfg["format"] != FORMAT or cfg["format_version"] not in READS_VERSIONS:
        raise ValueError(f"config.json is format {cfg['format']!r} v{cfg['format_version']}; "
                         f"this code reads {FORMAT!r} v{', v'.join(map(str, READS_VERSIONS))}")
    if "fingerprint" not in cfg["backbone"] or "source" not in cfg["backbone"]:
        raise ValueError("config.json backbone must record 'source' and 'fingerprint'")
    known = set(ModelConfig.__dataclass_fields__)
    out = ModelConfig(**{k: v for k, v in cfg.items() if k in known})
    out.format_version = FORMAT_VERSION  # re-exported, it is written in the current format
    return out


def backbone_spec(backbone: dict) -> tuple[str, str | None]:
    """(what `load_clip` takes, pretrained tag) for a recorded backbone.

    v1 exports recorded the toy CLIP as the relative path "data/models/toy-clip"; where that path is not
    there, the shipped model of that name is meant (the fingerprint check still guards it).
    """
    from rlcm.paths import TOY_MODELS

    source = str(backbone["source"])
    name = Path(source).name
    if not source.startswith("hf-hub:") and name in TOY_MODELS and source != name and not Path(source).exists():
        return name, None
    return source, backbone.get("pretrained")


def load(path: str | Path, clip=None, device: str = "cpu", backbone: str | Path | None = None,
         **hub) -> RewardModel:
    """Load an exported reward model: a directory, a zip, or a Hugging Face model repo id ("user/repo").

    The backbone is `clip` if given; else `load_clip(backbone)` if given (a local override, e.g. a copy of
    the weights on disk); else the source recorded in config.json. Either way its weights must match the
    recorded fingerprint. `hub` goes to `huggingface_hub.snapshot_download` (revision, cache_dir, token, ...).
    """
    p = Path(path)
    if not p.exists() and REPO_ID.fullmatch(str(path)):
        p = _fetch(str(path), **{k: v for k, v in hub.items() if v is not None})
    raw_cfg, blob = _read(p)
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

        spec, pretrained = (str(backbone), None) if backbone is not None else backbone_spec(cfg.backbone)
        try:
            clip = load_clip(spec, device=device, pretrained=pretrained)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"cannot load the backbone {spec!r} ({e}); pass backbone='<local copy>' or "
                             "clip=load_clip(...)") from None
    model = RewardModel(clip, head, cfg, raw_cfg.get("metrics"))
    model.check_backbone(clip)
    return model.to(device)
