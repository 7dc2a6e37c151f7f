"""Bounded backups and full restores: snapshots pruned to the last K, repo backups through a squashing
CommitScheduler, restore from a bucket or a repo into the data dir with rounds and the active LoRA."""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from feedback import FeedbackStore, backup, identity
from tests.fixtures_rm import fill_store


def votes(store, n, start=0, name="alice"):
    """`n` signed-in votes on fresh same-prompt pairs."""
    samples = store.samples()
    by_prompt: dict[str, list[str]] = {}
    for s in samples:
        by_prompt.setdefault(s["prompt"], []).append(s["id"])
    pairs = [(ids[i], ids[j]) for ids in by_prompt.values() for i in range(len(ids)) for j in range(i + 1, len(ids))]
    for k in range(start, start + n):
        store.vote(identity.signed_in(name), *pairs[k], "a", f"{name}-{k}")


def studio_files(data_dir: Path) -> None:
    """What a studio keeps beside the database: a finished round's LoRA, the active version, saved settings."""
    lora = data_dir / "rounds" / "1" / "lora"
    lora.mkdir(parents=True)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"lora weights")
    (data_dir / "rounds" / "1" / "checkpoint.tmp").mkdir()
    (data_dir / "rounds" / "1" / "checkpoint.tmp" / "adapter.safetensors").write_bytes(b"half written")
    (data_dir / "active.json").write_text(json.dumps({"version": "round-1"}))
    (data_dir / "settings.json").write_text(json.dumps({"format": 1, "values": {"steps": 6}}))


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "live") as s:
        fill_store(s, n_prompts=2, n_seeds=4)
        votes(s, 3)
        rid = s.create_round({"epochs": 40})
        s.update_round(rid, status="done", lora_path=str(tmp_path / "live" / "rounds" / str(rid) / "lora"))
        studio_files(s.data_dir)
        yield s


def rows(db_path, sql="SELECT client_id, choice, rater, undone_at FROM comparisons ORDER BY id"):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def check_restored(live: FeedbackStore, data_dir: Path, images: str = "all") -> None:
    assert rows(data_dir / "feedback.db") == rows(live.db_path)
    assert rows(data_dir / "feedback.db", "SELECT * FROM rater_tokens") == rows(live.db_path, "SELECT * FROM rater_tokens")
    assert (data_dir / "rounds" / "1" / "lora" / "pytorch_lora_weights.safetensors").read_bytes() == b"lora weights"
    assert not (data_dir / "rounds" / "1" / "checkpoint.tmp").exists()
    assert json.loads((data_dir / "active.json").read_text()) == {"version": "round-1"}
    assert (data_dir / "settings.json").exists()
    with FeedbackStore(data_dir) as r:
        assert r.get_round(1)["lora_path"] == str(data_dir / "rounds" / "1" / "lora")  # points into the new dir
        rated = {x for c in r.comparisons() for x in (c["sample_a"], c["sample_b"])}
        kept = {s["id"] for s in r.samples()}
        assert rated <= kept and all(r.image_path(s).exists() for s in kept)
        if images == "all":
            assert kept == {s["id"] for s in live.samples()}
        else:  # a repo holds rated images only; the unrated rows without an image are dropped
            assert kept == rated


def test_snapshots_are_pruned_to_the_last_k(store, tmp_path):
    bucket = tmp_path / "bucket"
    made = []
    for k in range(5):
        votes(store, 1, start=3 + k)
        made.append(backup.snapshot(store, bucket, keep=2))
    assert sorted(bucket.glob(backup.PATTERN)) == made[-2:]
    # retention deleted unrated samples locally: the images no kept snapshot references leave the bucket too
    store.prune_unrated(0)
    made.append(backup.snapshot(store, bucket, keep=1))
    assert sorted(bucket.glob(backup.PATTERN)) == made[-1:]
    in_bucket = {p.stem for p in (bucket / "images").glob("*/*.png")}
    assert in_bucket == {s["id"] for s in store.samples()}
    assert not [p for p in bucket.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        backup.snapshot(store, bucket, keep=0)


def test_restore_from_a_bucket_brings_rounds_and_the_active_lora(store, tmp_path):
    bucket = tmp_path / "bucket"
    snap = backup.snapshot(store, bucket, keep=3)
    fresh = tmp_path / "fresh"
    assert backup.restore(fresh, backup_dir=bucket) == snap
    check_restored(store, fresh)
    assert backup.restore(fresh, backup_dir=bucket) is None  # never over a live database


def test_repo_folder_holds_one_database_rewritten_only_on_change(store, tmp_path):
    folder = tmp_path / "repo-folder"
    key = backup.write_repo_folder(store, folder)
    db = folder / backup.REPO_DB
    first = db.stat().st_mtime_ns
    assert backup.write_repo_folder(store, folder, key) == key and db.stat().st_mtime_ns == first
    votes(store, 1, start=3)
    key2 = backup.write_repo_folder(store, folder, key)
    assert key2 != key and db.stat().st_mtime_ns != first
    assert sorted(p.name for p in folder.glob("*.db")) == [backup.REPO_DB]
    rated = {x for c in store.comparisons() for x in (c["sample_a"], c["sample_b"])}
    assert {p.stem for p in (folder / "images").glob("*/*.png")} == rated
    fresh = tmp_path / "fresh"
    assert backup.restore_from_folder(folder, fresh) == db
    check_restored(store, fresh, images="rated")


class RecordingHub:
    """Stands in for the Hub's HTTP API (unreachable offline): records what CommitScheduler sends."""

    def __init__(self):
        self.commits: list[dict[str, bytes]] = []
        self.squashes = 0
        self.pool = ThreadPoolExecutor(max_workers=1)

    def create_repo(self, repo_id, private=None, repo_type=None, exist_ok=False):
        assert repo_type == "dataset" and private is True
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def run_as_future(self, fn, *args, **kwargs) -> Future:
        return self.pool.submit(fn, *args, **kwargs)  # one at a time, as HfApi.run_as_future does

    def create_commit(self, repo_id, repo_type, operations, commit_message, revision=None):
        files = {}
        for op in operations:
            obj = op.path_or_fileobj
            obj.seek(0)
            files[op.path_in_repo] = obj.read()
        self.commits.append(files)
        return "commit"

    def super_squash_history(self, repo_id, repo_type=None, branch=None):
        self.squashes += 1


def test_repo_backup_goes_through_a_squashing_commit_scheduler(store, tmp_path):
    hub = RecordingHub()
    folder = tmp_path / "repo-folder"
    sched = backup.start_repo_backup(store, "me/studio-backup", folder, every_minutes=60, hf_api=hub)
    try:
        while not hasattr(sched, "last_future"):  # the scheduler pushes once as it starts
            time.sleep(0.01)
        sched.last_future.result()
        sched.trigger().result()  # nothing changed since: no commit, only the squash
        assert len(hub.commits) == 1 and hub.squashes == 2
        files = hub.commits[0]
        assert f"{backup.REPO_PATH}/{backup.REPO_DB}" in files
        assert f"{backup.REPO_PATH}/studio/rounds/1/lora/pytorch_lora_weights.safetensors" in files
        assert f"{backup.REPO_PATH}/studio/active.json" in files
        (tmp_path / "pushed.db").write_bytes(files[f"{backup.REPO_PATH}/{backup.REPO_DB}"])
        assert rows(tmp_path / "pushed.db") == rows(store.db_path)
        n = len(hub.commits)
        votes(store, 1, start=3)
        sched.trigger().result()
        assert list(hub.commits[n]) == [f"{backup.REPO_PATH}/{backup.REPO_DB}"]  # only what changed
    finally:
        sched.stop()


def test_restore_from_a_repo_never_touches_the_working_directory(store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    backup.snapshot(store, work)  # a snapshot lying in the working directory must not be picked up
    before = sorted(p.name for p in work.rglob("*"))
    fresh = tmp_path / "fresh"
    assert backup.restore_latest("", fresh) is None
    with pytest.raises(Exception):  # offline: the download fails ...
        backup.restore(fresh, repo_id="me/nothing-here")
    assert sorted(p.name for p in work.rglob("*")) == before  # ... leaving nothing behind anywhere
    assert not (fresh / "feedback.db").exists() and not list(fresh.glob(".restore-*"))
