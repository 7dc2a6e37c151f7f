"""Snapshots of the live database to a backup location, and restoring the newest one when the local copy is gone.

The live SQLite file stays on local disk (network mounts such as Spaces Storage Buckets lock unreliably);
a snapshot is a consistent copy made with SQLite's online backup API, named by UTC time, plus any image
files the backup location lacks. Optionally the backup folder is mirrored to a Hugging Face dataset repo.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

PATTERN = "feedback-*.db"


def _copy_missing_images(src: Path, dst: Path) -> int:
    n = 0
    for f in src.glob("*/*.png"):
        target = dst / f.parent.name / f.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".tmp-{target.name}")
            shutil.copyfile(f, tmp)
            tmp.replace(target)
            n += 1
    return n


def _backup_db(src: sqlite3.Connection, dest: Path) -> None:
    """Online-backup `src` into `dest` through a temporary file, so `dest` is never half-written."""
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    out = sqlite3.connect(tmp)
    try:
        src.backup(out)
        out.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
    finally:
        out.close()
    tmp.replace(dest)


def snapshot(store, backup_dir: str | Path, repo_id: str | None = None, token: str | None = None) -> Path:
    """Write `backup_dir/feedback-<UTC time>.db` and copy new images to `backup_dir/images`; returns the db path.

    With `repo_id` (and a token, or a logged-in huggingface_hub), the backup folder is uploaded to that
    dataset repo as well.
    """
    backup_dir = Path(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = backup_dir / f"feedback-{stamp}.db"
    src = sqlite3.connect(store.db_path, timeout=store.busy_timeout_s)
    try:
        _backup_db(src, dest)
    finally:
        src.close()
    _copy_missing_images(store.images_dir, backup_dir / "images")  # after the db: every row's image exists by now
    if repo_id:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
        api.upload_folder(folder_path=str(backup_dir), repo_id=repo_id, repo_type="dataset",
                          allow_patterns=[dest.name, "images/**"], commit_message=f"feedback snapshot {stamp}")
    return dest


def _healthy(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            return ok and conn.execute("SELECT count(*) FROM comparisons").fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def restore_latest(backup_dir: str | Path, data_dir: str | Path, repo_id: str | None = None,
                   token: str | None = None) -> Path | None:
    """If `data_dir/feedback.db` is missing, restore the newest healthy snapshot; returns it, or None.

    Never overwrites an existing database. With `repo_id`, the dataset repo is downloaded into
    `backup_dir` first.
    """
    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    db_path = data_dir / "feedback.db"
    if db_path.exists():
        return None
    if repo_id:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, repo_type="dataset", local_dir=str(backup_dir), token=token)
    for snap in sorted(backup_dir.glob(PATTERN), reverse=True):  # names sort by time
        if not _healthy(snap):
            continue
        data_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("feedback.db-wal", "feedback.db-shm"):  # they belong to the lost database
            (data_dir / stale).unlink(missing_ok=True)
        src = sqlite3.connect(f"file:{snap}?mode=ro", uri=True)
        try:
            _backup_db(src, db_path)
        finally:
            src.close()
        _copy_missing_images(backup_dir / "images", data_dir / "images")
        return snap
    return None
