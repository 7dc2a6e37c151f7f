"""Bounded disk in the store: retention of unrated samples, one export per data version, seeds out of range."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest

from feedback import FeedbackStore
from feedback import identity
from tests.fixtures_rm import render


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb") as s:
        yield s


def add(store, seed, prompt="a red circle"):
    return store.add_sample(render(seed), prompt, seed=seed, steps=4, guidance=8.0)


def pngs(store):
    return sorted(p.stem for p in store.images_dir.glob("*/*.png"))


def test_retention_deletes_the_oldest_unrated_samples_and_their_files(store):
    ids = [add(store, i, prompt=f"prompt {i % 3}") for i in range(12)]
    rated = (ids[0], ids[3])  # the oldest, in a comparison (then undone: still referenced)
    tok = store.vote(identity.typed("alice"), *rated, "a", "c1")["rater_token"]
    store.undo_vote(identity.typed("alice", tok))
    keep = {ids[1]}  # e.g. waiting in the pair queue
    out = store.prune_unrated(limit=5, keep=keep)
    unrated = [i for i in ids if i not in rated]  # 10, oldest first
    expected_gone = [i for i in unrated if i not in keep][:5]
    assert out == {"deleted": 5, "unrated": 5}
    left = {s["id"] for s in store.samples()}
    assert left == set(ids) - set(expected_gone)
    assert pngs(store) == sorted(left)  # files follow rows
    assert store.prune_unrated(limit=5, keep=keep) == {"deleted": 0, "unrated": 5}
    # comparisons still resolve; prompts that lost every sample are gone, the others stay
    assert len(store.comparisons(include_skips=True)) == 0 and store.get_sample(ids[0])
    prompts = {r[0] for r in store._db().execute("SELECT text FROM prompts").fetchall()}
    assert prompts == {s["prompt"] for s in store.samples()}


def test_retention_spares_young_samples_and_refuses_bad_limits(store):
    ids = [add(store, i) for i in range(6)]
    assert store.prune_unrated(limit=0, min_age_s=3600)["deleted"] == 0
    assert len(store.samples()) == 6
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError):
            store.prune_unrated(limit=bad)
    assert store.prune_unrated(limit=0) == {"deleted": 6, "unrated": 0}
    assert pngs(store) == [] and store.counts()["prompts"] == 0
    assert ids  # every one was unrated


def test_repeated_generation_stays_bounded(store):
    """1,000 pairs generated and pruned as they come: disk holds `limit` unrated samples plus the rated ones."""
    limit = 20
    for i in range(0, 200, 2):
        a, b = add(store, i), add(store, i + 1)
        if i % 20 == 0:
            store.vote(identity.signed_in("rater"), a, b, "a", f"c{i}")
        store.prune_unrated(limit, keep={a, b})
    rated = {x for r in store.comparisons() for x in (r["sample_a"], r["sample_b"])}
    assert len(rated) == 20
    assert len(store.samples()) == len(pngs(store)) == limit + len(rated)


def test_a_seed_out_of_range_writes_nothing(store):
    for seed in (2**63, 2**64 + 5, -1, 1.0, True, "7"):
        with pytest.raises(ValueError, match="seed"):
            store.add_sample(render(1), "a red circle", seed=seed, steps=4, guidance=8.0)
    for guidance in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance"):
            store.add_sample(render(1), "a red circle", seed=1, steps=4, guidance=guidance)
    assert pngs(store) == [] and store.counts()["samples"] == 0
    assert store.add_sample(render(1), "a red circle", seed=2**63 - 1, steps=4, guidance=8.0)


def test_orphan_images_are_swept(store):
    sid = add(store, 1)
    orphan = store.images_dir / "ab" / ("ab" + "0" * 62 + ".png")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"not a sample")
    assert store.delete_orphan_images(min_age_s=3600) == 0  # too young: maybe a write in progress
    assert store.delete_orphan_images(min_age_s=0) == 1
    assert pngs(store) == [sid]


def test_one_export_per_data_version(store, tmp_path):
    ids = [add(store, i) for i in range(4)]
    tok = store.vote(identity.typed("alice"), ids[0], ids[1], "a", "c1")["rater_token"]
    out = tmp_path / "exports"
    first = store.export_versioned(out)
    mtime = first.stat().st_mtime_ns
    time.sleep(0.01)
    assert store.export_versioned(out) == first and first.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert pq.read_table(first).num_rows == 1
    store.vote(identity.typed("alice", tok), ids[2], ids[3], "b", "c2")
    second = store.export_versioned(out)
    assert second != first and pq.read_table(second).num_rows == 2
    store.undo_vote(identity.typed("alice", tok))
    third = store.export_versioned(out, keep_last=1)
    assert third.name == first.name and pq.read_table(third).num_rows == 1  # same data as the first: same name
    assert sorted(p.name for p in out.iterdir()) == [third.name]  # older versions pruned, no temp files


def test_concurrent_exports_do_not_collide(store, tmp_path):
    ids = [add(store, i) for i in range(6)]
    for k, (a, b) in enumerate([(0, 1), (2, 3), (4, 5)]):
        store.vote(identity.signed_in("bob"), ids[a], ids[b], "a", f"c{k}")
    out, results, errors = tmp_path / "exports", [], []

    def export():
        try:
            results.append(store.export_versioned(out))
        except Exception as e:  # noqa: BLE001 - any failure is the bug under test
            errors.append(e)

    threads = [threading.Thread(target=export) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    assert [p.name for p in out.iterdir()] == [results[0].name]
    assert pq.read_table(results[0]).num_rows == 3
