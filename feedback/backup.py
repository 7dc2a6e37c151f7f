"""Backups of a studio's data dir (database, images, rounds, the active LoRA) and restoring them into an empty one.

The live SQLite file stays on local disk (network mounts such as Spaces Storage Buckets lock unreliably).
Two destinations:
- a folder (a mounted bucket): `feedback-<UTC time>.db` snapshots made with SQLite's online backup API, the
  images they reference under `images/`, the studio's files under `studio/`; only the newest `keep` are kept;
- a Hub dataset repo: `start_repo_backup` runs a `huggingface_hub.CommitScheduler` (squashed history) on a
  folder of its own holding one `feedback.db`, the rated images and `studio/`, rewritten only when the data
  changed, so the repo holds one copy instead of a new database every period.
`restore` fills an empty data dir from either; a repo is fetched into a temporary folder inside the data
dir (only the backup's files), never into the working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

from . import images as imgs

PATTERN = "feedback-*.db"  # bucket snapshots; names sort by time
REPO_DB = "feedback.db"  # the one database in a repo backup folder
REPO_PATH = "studio-backup"  # where the repo backup lives inside the dataset repo
STUDIO = "studio"  # subfolder for the studio's own files
STUDIO_FILES = ("rounds", "reward_models", "compare", "active.json", "settings.json")  # under data_dir


# ---------------------------------------------------------------- files

def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copy2(src, tmp)  # keeps the mtime: an unchanged file is not copied (or uploaded) again
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_tree(src: Path, dst: Path) -> int:
    """Copy the files of `src` (a file or a folder) that `dst` lacks or holds in another size or mtime."""
    if not src.exists():
        return 0
    pairs = [(src, dst)] if src.is_file() else [(f, dst / f.relative_to(src)) for f in src.rglob("*") if f.is_file()]
    n = 0
    for f, target in pairs:
        if f.name.endswith(".tmp") or ".tmp" in f.parent.name:  # half-written checkpoints and the like
            continue
        s = f.stat()
        try:
            t = target.stat()
            if t.st_size == s.st_size and int(t.st_mtime) == int(s.st_mtime):
                continue
        except FileNotFoundError:
            pass
        _copy_atomic(f, target)
        n += 1
    return n


def copy_studio_files(data_dir: str | Path, dest: str | Path) -> int:
    """Rounds (checkpoints, LoRAs), reward models, compare images, the active version and the saved settings."""
    return sum(_sync_tree(Path(data_dir) / name, Path(dest) / name) for name in STUDIO_FILES)


def _sample_ids(db_path: Path, rated_only: bool) -> set[str]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        sql = ("SELECT sample_a FROM comparisons UNION SELECT sample_b FROM comparisons" if rated_only
               else "SELECT id FROM samples")
        return {r[0] for r in conn.execute(sql)}
    finally:
        conn.close()


def _copy_images(ids: set[str], src: Path, dst: Path) -> int:
    n = 0
    for sid in ids:
        f = imgs.image_path(src, sid)  # .png, or .jpg for an imported JPEG kept as it came
        target = dst / f.relative_to(src)
        if f.exists() and not target.exists():
            _copy_atomic(f, target)
            n += 1
    return n


def _backup_db(src: sqlite3.Connection, dest: Path) -> None:
    """Online-backup `src` into `dest` through a temporary file, so `dest` is never half-written."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    out = sqlite3.connect(tmp)
    try:
        src.backup(out)
        out.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
    finally:
        out.close()
    try:
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


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


# ---------------------------------------------------------------- bucket snapshots

def snapshot(store, backup_dir: str | Path, repo_id: str | None = None, token: str | None = None,
             keep: int | None = None, studio_files: bool = True) -> Path:
    """Write `backup_dir/feedback-<UTC time>.db`, the images it references and the studio files; returns the db.

    With `keep`, only the newest `keep` snapshots (and the images they reference) stay. `repo_id` uploads the
    whole folder to a dataset repo each call (the old way, kept for the CLI; a running studio should use
    `start_repo_backup`, which squashes history and uploads only what changed).
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    backup_dir = Path(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = backup_dir / f"feedback-{stamp}.db"
    src = sqlite3.connect(store.db_path, timeout=store.busy_timeout_s)
    try:
        _backup_db(src, dest)
    finally:
        src.close()
    # after the db, so every row's image exists by now (retention never deletes a file before its row)
    _copy_images(_sample_ids(dest, rated_only=False), store.images_dir, backup_dir / "images")
    if studio_files:
        copy_studio_files(store.data_dir, backup_dir / STUDIO)
    if keep is not None:
        prune_snapshots(backup_dir, keep)
    if repo_id:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
        api.upload_folder(folder_path=str(backup_dir), repo_id=repo_id, repo_type="dataset",
                          allow_patterns=[dest.name, "images/**"], commit_message=f"feedback snapshot {stamp}")
    return dest


def prune_snapshots(backup_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` snapshots, leftover temporaries, and images no kept snapshot references."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    backup_dir = Path(backup_dir)
    snaps = sorted(backup_dir.glob(PATTERN), reverse=True)
    gone = snaps[keep:]
    for p in gone + [t for t in backup_dir.glob(".feedback-*.tmp")]:
        p.unlink(missing_ok=True)
    kept = [p for p in snaps[:keep] if _healthy(p)]
    if kept:  # with no healthy snapshot left, images are all there is: keep them
        wanted = set().union(*(_sample_ids(p, rated_only=False) for p in kept))
        for f in imgs.image_files(backup_dir / "images"):
            if f.stem not in wanted:
                f.unlink(missing_ok=True)
    return gone


# ---------------------------------------------------------------- repo backups (CommitScheduler)

def _change_key(store) -> str:
    """Changes whenever anything a backup holds changes: comparisons, samples, raters' claims, rounds."""
    db = store._db()
    h = hashlib.sha256(store.data_version(include_skips=True).encode())
    for sql in ("SELECT count(*), max(created_at) FROM samples", "SELECT count(*) FROM comparisons"
                " WHERE undone_at IS NOT NULL", "SELECT count(*), max(created_at) FROM rater_tokens",
                "SELECT * FROM rounds ORDER BY id"):
        h.update(json.dumps(db.execute(sql).fetchall(), default=str).encode())
    return h.hexdigest()


def write_repo_folder(store, folder: str | Path, last_key: str | None = None) -> str:
    """Bring a repo backup folder up to date; returns the change key (pass it back to skip an unchanged db).

    One `feedback.db` (rewritten only when the data changed), the images of rated samples (a repo never
    deletes, so unrated samples, which retention deletes, stay out), and the studio files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = _change_key(store)
    if key != last_key or not (folder / REPO_DB).exists():
        src = sqlite3.connect(store.db_path, timeout=store.busy_timeout_s)
        try:
            _backup_db(src, folder / REPO_DB)
        finally:
            src.close()
        _copy_images(_sample_ids(folder / REPO_DB, rated_only=True), store.images_dir, folder / "images")
    copy_studio_files(store.data_dir, folder / STUDIO)
    return key


def start_repo_backup(store, repo_id: str, folder: str | Path, every_minutes: float = 15,
                      token: str | None = None, hf_api=None):
    """Push `folder` (see `write_repo_folder`) to the private dataset repo `repo_id` every `every_minutes`.

    A `huggingface_hub.CommitScheduler` with `squash_history=True`; the folder is refreshed inside each push
    (pushes run one at a time), so a file is never rewritten while it uploads. `folder` must be a folder of
    its own (not the bucket). Call `.trigger().result()` to push now, `.stop()` to end.
    """
    from huggingface_hub import CommitScheduler

    class _StudioBackup(CommitScheduler):
        def push_to_hub(self):
            with self.lock:
                self.key = write_repo_folder(store, self.folder_path, getattr(self, "key", None))
            return super().push_to_hub()

    return _StudioBackup(repo_id=repo_id, folder_path=folder, every=every_minutes, squash_history=True,
                         repo_type="dataset", private=True, path_in_repo=REPO_PATH, token=token, hf_api=hf_api)


# ---------------------------------------------------------------- restore

def restore_from_folder(folder: str | Path, data_dir: str | Path) -> Path | None:
    """Fill `data_dir` from a backup folder (bucket or repo layout) if it has no database; returns the db used.

    Takes the newest healthy database, the images it references, and the studio files (rounds with their
    LoRAs, reward models, the active version, saved settings). Rounds' LoRA paths are pointed into
    `data_dir`; samples nobody rated whose image did not travel are dropped.
    """
    folder, data_dir = Path(folder), Path(data_dir)
    db_path = data_dir / "feedback.db"
    if db_path.exists():
        return None
    candidates = sorted(folder.glob(PATTERN), reverse=True) + [p for p in [folder / REPO_DB] if p.exists()]
    snap = next((p for p in candidates if _healthy(p)), None)
    if snap is None:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("feedback.db-wal", "feedback.db-shm"):  # they belong to the lost database
        (data_dir / stale).unlink(missing_ok=True)
    copy_studio_files(folder / STUDIO, data_dir)  # files first: the database appearing marks a finished restore
    _copy_images(_sample_ids(snap, rated_only=False), folder / "images", data_dir / "images")
    tmp = data_dir / f".restore-{uuid.uuid4().hex[:8]}.db"
    src = sqlite3.connect(f"file:{snap}?mode=ro", uri=True)
    try:
        _backup_db(src, tmp)
    finally:
        src.close()
    conn = sqlite3.connect(tmp)
    try:
        for rid, lora in conn.execute("SELECT id, lora_path FROM rounds WHERE lora_path IS NOT NULL").fetchall():
            conn.execute("UPDATE rounds SET lora_path = ? WHERE id = ?", [str(data_dir / "rounds" / str(rid) / "lora"), rid])
        rated = {r[0] for r in conn.execute("SELECT sample_a FROM comparisons UNION SELECT sample_b FROM comparisons")}
        for (sid,) in conn.execute("SELECT id FROM samples").fetchall():
            if sid not in rated and not imgs.image_path(data_dir / "images", sid).exists():
                conn.execute("DELETE FROM samples WHERE id = ?", [sid])
        conn.commit()
    finally:
        conn.close()
    tmp.replace(db_path)
    return snap


def restore(data_dir: str | Path, backup_dir: str | Path | None = None, repo_id: str | None = None,
            token: str | None = None) -> Path | None:
    """Restore an empty `data_dir` from the bucket folder `backup_dir`, else from the dataset repo `repo_id`.

    Never overwrites an existing database; returns the database restored from, or None. The repo is
    fetched (only its backup folder) into a temporary folder inside `data_dir`, removed afterwards.
    """
    data_dir = Path(data_dir)
    if (data_dir / "feedback.db").exists():
        return None
    if backup_dir:
        snap = restore_from_folder(backup_dir, data_dir)
        if snap is not None or not repo_id:
            return snap
    if not repo_id:
        return None
    from huggingface_hub import snapshot_download

    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".restore-{uuid.uuid4().hex[:8]}"
    try:
        snapshot_download(repo_id, repo_type="dataset", local_dir=str(tmp), allow_patterns=[f"{REPO_PATH}/**"],
                          token=token)
        snap = restore_from_folder(tmp / REPO_PATH, data_dir)
        return None if snap is None else Path(f"hf://datasets/{repo_id}/{REPO_PATH}/{snap.name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore_latest(backup_dir: str | Path | None, data_dir: str | Path, repo_id: str | None = None,
                   token: str | None = None) -> Path | None:
    """`restore` with the old argument order (an empty `backup_dir` means none, not the working directory)."""
    return restore(data_dir, backup_dir=backup_dir or None, repo_id=repo_id, token=token)
