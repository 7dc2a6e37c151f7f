"""One home per fact: the rater-name limits of identity.py hold in the store, the choice labels of pairs.LABEL."""

from __future__ import annotations

import pytest

from feedback import FeedbackStore, identity
from feedback.pairs import LABEL

from .fixtures_rm import fill_store


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb") as s:
        fill_store(s, n_prompts=1, n_seeds=3)
        yield s


def _pair(store):
    ids = [s["id"] for s in store.samples()]
    return ids[0], ids[1]


def test_the_longest_signed_in_name_is_stored_and_a_longer_rater_is_refused(store):
    a, b = _pair(store)
    longest = identity.signed_in("u" * identity.MAX_HF_USER)
    assert len(longest.name) == identity.MAX_STORED_RATER
    assert store.vote(longest, a, b, "a", "c1")["created"]
    with pytest.raises(ValueError):
        identity.signed_in("u" * (identity.MAX_HF_USER + 1))
    # the store's own check (scripts and imports bypass identity.typed) uses the identity limit, not MAX_NAME
    too_long = "r" * (identity.MAX_STORED_RATER + 1)
    with pytest.raises(ValueError, match=f"at most {identity.MAX_STORED_RATER} characters"):
        store.record_comparison(a, b, "a", too_long, "c2")
    with pytest.raises(ValueError):
        store.next_pair(too_long)
    assert store.counts()["comparisons"] == 1


def test_parquet_labels_follow_the_one_label_map(store, tmp_path):
    """Export writes label_0 = LABEL[choice], label_1 = 1 - label_0; import reads each choice back."""
    import pyarrow.parquet as pq

    from feedback import parquet

    ids = [s["id"] for s in store.samples()]
    pairs = [(ids[0], ids[1]), (ids[0], ids[2]), (ids[1], ids[2])]
    for (a, b), choice in zip(pairs, LABEL):
        store.record_comparison(a, b, choice, "ann", f"c-{choice}")
    path = tmp_path / "out.parquet"
    parquet.export_parquet(store, path)
    rows = pq.read_table(path, columns=["label_0", "label_1", "has_label"]).to_pylist()
    assert sorted((r["label_0"], r["label_1"]) for r in rows) == sorted((p, 1.0 - p) for p in LABEL.values())
    with FeedbackStore(tmp_path / "fb2") as other:
        parquet.import_parquet(other, path)
        assert sorted(c["choice"] for c in other.comparisons()) == sorted(LABEL)
