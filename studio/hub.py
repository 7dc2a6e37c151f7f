"""Pushing the studio's artefacts to the Hugging Face Hub, each to its repo type (an admin action, with HF_TOKEN).

One function per artefact, each taking `api` (default `huggingface_hub.HfApi(token=HF_TOKEN)`) so tests pass a
fake. Inputs are checked before anything is created on the Hub; each push is one commit; each returns the
commit URL.
  reward model  model repo:   model.safetensors, config.json, README.md   -> reward_model.load("user/repo")
  LoRA          model repo:   pytorch_lora_weights.safetensors, README.md -> pipe.load_lora_weights("user/repo")
  preferences   dataset repo: data/train-00000-of-00001.parquet, README.md -> datasets.load_dataset("user/repo")
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
DATA_FILE = "data/train-00000-of-00001.parquet"  # the Hub's default layout: `load_dataset(repo)` finds the split


def hub_api(token: str | None = None):
    """An HfApi with `token` or HF_TOKEN; PermissionError without one (pushing needs a write token)."""
    from huggingface_hub import HfApi

    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise PermissionError("pushing to the Hugging Face Hub needs a write token: set HF_TOKEN")
    return HfApi(token=token)


def _check(repo_id: str, folder: Path, files: tuple[str, ...]) -> None:
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"repo id must look like 'user/name', got {str(repo_id)[:100]!r}")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {missing}; export it first")


def _push_folder(folder: Path, repo_id: str, files: tuple[str, ...], what: str, api, private: bool) -> str:
    _check(repo_id, folder, files)
    api = api if api is not None else hub_api()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", allow_patterns=list(files),
                             commit_message=f"Upload {what} from RLCM Studio")
    return str(getattr(info, "commit_url", info))


def push_reward_model(directory: str | Path, repo_id: str, api=None, private: bool = True) -> str:
    """Push an exported reward model directory (`reward_model.export`) to a model repo."""
    from reward_model.export import FILES

    return _push_folder(Path(directory), repo_id, FILES, "reward model", api, private)


def push_lora(directory: str | Path, repo_id: str, api=None, private: bool = True) -> str:
    """Push an exported LoRA folder (`rlcm.lora_export.export_lora`) to a model repo."""
    from rlcm.lora_export import FILES

    return _push_folder(Path(directory), repo_id, FILES, "RLCM LoRA", api, private)


def dataset_card(parquet_path: Path, license: str = "unknown") -> str:
    """A dataset card whose `configs` point `load_dataset(repo)` at the Parquet file."""
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard, DatasetCardData

    rows = pq.ParquetFile(parquet_path).metadata.num_rows
    data = DatasetCardData(license=license, task_categories=["text-to-image"], size_categories=[_size(rows)],
                           tags=["preference", "human-feedback", "pick-a-pic", "rlcm"],
                           configs=[{"config_name": "default", "data_files": [{"split": "train",
                                                                              "path": "data/train-*.parquet"}]}])
    body = f"""
# RLCM Studio preferences

{rows} pairwise judgements of two images of one prompt, collected in RLCM Studio, in the columns and types of
`yuvalkirstain/pickapic_v2` (`jpg_0`/`jpg_1` JPEG bytes, `label_0`/`label_1` 1/0, 0/1 or 0.5/0.5 for a
tie, `user_id` an int64 per rater, `best_image_uid` null for a tie). Seeds, steps, guidance and rater names
travel in the Parquet file's `rlcm` metadata.

```python
import datasets
ds = datasets.load_dataset("this/repo", split="train")   # concatenates with pickapic_v2 rows
```
"""
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def _size(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def push_dataset(parquet_path: str | Path, repo_id: str, api=None, private: bool = True,
                 license: str = "unknown") -> str:
    """Push a preference export (`FeedbackStore.export_parquet`) with a dataset card to a dataset repo."""
    from huggingface_hub import CommitOperationAdd

    path = Path(parquet_path)
    _check(repo_id, path.parent, (path.name,))
    try:  # reading the file for the card refuses a broken one before the Hub is touched
        card = dataset_card(path, license).encode()
    except Exception as e:
        raise ValueError(f"{path} is not a readable Parquet file: {e}") from None
    api = api if api is not None else hub_api()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.create_commit(repo_id=repo_id, repo_type="dataset", commit_message="Upload preferences from RLCM Studio",
                             operations=[CommitOperationAdd(path_in_repo=DATA_FILE, path_or_fileobj=str(path)),
                                         CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card)])
    return str(getattr(info, "commit_url", info))
