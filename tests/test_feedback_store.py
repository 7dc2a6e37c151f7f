"""Feedback store: samples, comparisons (validation, retries, undo), pair selection, rounds, concurrency, crashes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter

import numpy as np
import pytest

from feedback import FeedbackStore
from feedback.pairs import PairPolicy, pair_key
from tests.conftest import ROOT
from tests.fixtures_rm import fill_store, render


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb") as s:
        yield s


def _pair(store, prompt_index=0):
    prompt = sorted({s["prompt"] for s in store.samples()})[prompt_index]
    ids = [s["id"] for s in store.samples() if s["prompt"] == prompt]
    return ids[0], ids[1]


def test_add_sample_is_content_addressed_and_idempotent(store):
    img = render(1)
    sid = store.add_sample(img, "a red circle", seed=3, steps=4, guidance=8.0)
    assert store.add_sample(img, "a red circle", seed=3, steps=4, guidance=8.0) == sid
    s = store.get_sample(sid)
    assert (s["prompt"], s["seed"], s["steps"], s["guidance"], s["generator"]) == ("a red circle", 3, 4, 8.0, "base")
    assert s["path"].endswith(f"images/{sid[:2]}/{sid}.png")
    assert np.array_equal(np.asarray(store.load_image(sid)), np.asarray(img))
    assert store.counts()["samples"] == 1
    with pytest.raises(KeyError):
        store.get_sample("0" * 64)
    with pytest.raises(ValueError, match="seed"):
        store.add_sample(img, "a red circle", seed="3", steps=4, guidance=8.0)


def test_record_comparison_validates_and_writes_nothing_on_error(store):
    fill_store(store, n_prompts=2, n_seeds=2)
    a, b = _pair(store, 0)
    c, _ = _pair(store, 1)
    bad = [((a, a, "a", "r", "x1"), "different samples"), ((a, "0" * 64, "a", "r", "x2"), "unknown sample"),
           ((a, c, "a", "r", "x3"), "different prompts"), ((a, b, "left", "r", "x4"), "choice must be one of"),
           ((a, b, "a", " ", "x5"), "rater"), ((a, b, "a", "r", ""), "client_id")]
    for args, msg in bad:
        with pytest.raises(ValueError, match=msg):
            store.record_comparison(*args)
    assert store.counts()["comparisons"] == 0 and store.rater_stats() == []


def test_retried_client_id_records_once_and_undo_excludes(store):
    fill_store(store, n_prompts=1, n_seeds=3)
    a, b = _pair(store)
    first = store.record_comparison(a, b, "a", "alice", "cid-1")
    again = store.record_comparison(a, b, "b", "alice", "cid-1")  # a retry; the first answer wins
    assert first["created"] and not again["created"] and again["id"] == first["id"] and again["choice"] == "a"
    with pytest.raises(ValueError, match="already used"):
        store.record_comparison(a, b, "a", "bob", "cid-1")
    store.record_comparison(b, a, "tie", "alice", "cid-2")
    store.record_comparison(a, b, "skip", "bob", "cid-3")
    c = store.counts()
    assert (c["comparisons"], c["labelled"], c["raters"], c["a"], c["tie"], c["skip"]) == (3, 2, 2, 1, 1, 1)
    undone = store.undo_last("alice")
    assert undone["client_id"] == "cid-2" and undone["undone_at"]
    c = store.counts()
    assert (c["comparisons"], c["tie"], c["undone"]) == (2, 0, 1)
    assert [r["client_id"] for r in store.comparisons()] == ["cid-1"]
    assert [r["client_id"] for r in store.comparisons(include_skips=True)] == ["cid-1", "cid-3"]
    assert {r["rater"]: r["comparisons"] for r in store.rater_stats()} == {"alice": 1, "bob": 1}
    assert store.undo_last("nobody") is None


def test_next_pair_never_repeats_for_a_rater(store):
    fill_store(store, n_prompts=3, n_seeds=4)  # 3 prompts x C(4, 2) = 18 pairs
    a, b = _pair(store)
    store.record_comparison(b, a, "a", "alice", "pre")  # judged in the other order beforehand
    seen = {pair_key(a, b)}
    for i in range(40):
        pair = store.next_pair("alice", rng=i)
        if pair is None:
            break
        x, y = pair
        assert x["prompt"] == y["prompt"] and x["seed"] != y["seed"]
        assert pair_key(x["id"], y["id"]) not in seen
        seen.add(pair_key(x["id"], y["id"]))
        store.record_comparison(x["id"], y["id"], "skip" if i % 5 == 0 else "a", "alice", f"c{i}")
    assert len(seen) == 18 and store.next_pair("alice") is None
    assert store.next_pair("bob") is not None  # other raters still have every pair
    store.undo_last("alice")  # an undone judgement frees its pair again
    assert store.next_pair("alice") is not None


def test_next_pair_mixes_generators_and_follows_uncertainty(store):
    fill_store(store, n_prompts=2, n_seeds=3, generators=("base", "round-1"))
    kinds = Counter()
    for i in range(200):
        x, y = store.next_pair("alice", generator="round-1", rng=i)
        kinds[tuple(sorted((x["generator"], y["generator"])))] += 1
    assert kinds[("base", "round-1")] > 60 and kinds[("round-1", "round-1")] > 60 and not kinds[("base", "base")]
    a, b = _pair(store)
    target = pair_key(a, b)
    for i in range(10):
        x, y = store.next_pair("carol", uncertainty=lambda ps: [float(pair_key(*p) == target) for p in ps], rng=i,
                               generator="base", policy=PairPolicy(cross_fraction=0.0))
        assert pair_key(x["id"], y["id"]) == target


def test_rounds(store):
    assert store.next_round_id() == 1
    rid = store.create_round({"lr": 1e-4, "steps": 10})
    assert rid == 1 and store.next_round_id() == 2  # the warm-up prepares that round's checks
    assert store.get_round(rid)["status"] == "pending"
    store.update_round(rid, status="running", reward_model_version="rm-1")
    done = store.update_round(rid, status="done", lora_path="loras/r1", metrics={"reward": 0.7})
    assert done["finished_at"] and done["metrics"] == {"reward": 0.7} and done["config"]["steps"] == 10
    with pytest.raises(ValueError, match="must be one of pending"):
        store.update_round(rid, status="exploded")
    with pytest.raises(ValueError, match="unknown round field"):
        store.update_round(rid, colour="red")
    with pytest.raises(KeyError):
        store.get_round(999)
    assert [r["id"] for r in store.rounds()] == [rid]


def test_concurrent_submissions_with_retries_record_each_once(store):
    fill_store(store, n_prompts=2, n_seeds=3)
    a, b = _pair(store)
    submissions = [(f"client-{i}", "a" if i % 2 else "b", f"rater-{i % 5}") for i in range(60)]
    created, errors = Counter(), []
    barrier = threading.Barrier(8)

    def worker(k):
        barrier.wait()
        order = submissions[k * 7 % 60:] + submissions[:k * 7 % 60]  # every thread retries every submission
        for cid, choice, rater in order:
            try:
                row = store.record_comparison(a, b, choice, rater, cid)
                created[cid] += row["created"]
            except Exception as e:  # pragma: no cover - the assertion below reports it
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(created[cid] == 1 for cid, _, _ in submissions)
    rows = store.comparisons()
    assert len(rows) == 60 and Counter(r["client_id"] for r in rows) == Counter(c for c, _, _ in submissions)
    assert {r["client_id"]: r["choice"] for r in rows} == {c: ch for c, ch, _ in submissions}


CHILD = """
import sys
from feedback import FeedbackStore
store = FeedbackStore(sys.argv[1])
a, b = sys.argv[2], sys.argv[3]
i = 0
while True:
    store.record_comparison(a, b, "a" if i % 2 else "tie", "writer", f"k{i}")
    print(f"ack k{i}", flush=True)
    i += 1
"""


@pytest.mark.parametrize("kill_after", [5, 40])
def test_killed_writer_leaves_every_acknowledged_rating(tmp_path, kill_after):
    data = tmp_path / "fb"
    with FeedbackStore(data) as s:
        fill_store(s, n_prompts=1, n_seeds=2)
        a, b = _pair(s)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), a, b], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    acked = []
    for line in proc.stdout:
        acked.append(line.split()[1])
        if len(acked) >= kill_after:
            proc.send_signal(signal.SIGKILL)  # mid-loop: it is writing the next rating
            break
    acked += [line.split()[1] for line in proc.stdout if line.startswith("ack")]  # printed before the kill
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(data / "feedback.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with FeedbackStore(data) as s:
        stored = {r["client_id"] for r in s.comparisons()}
    assert set(acked) <= stored and len(stored) <= len(acked) + 1  # at most the unacknowledged one in flight
