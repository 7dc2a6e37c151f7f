"""Feedback exchange and durability: Parquet round trip, hostile files refused untouched, bad rows reported, snapshots, CLI."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from feedback import FeedbackStore
from feedback.__main__ import main as cli
from feedback.parquet import SCHEMA, user_number
from tests.conftest import ROOT
from tests.fixtures_rm import fill_store


def _labelled_store(path, n=8):
    store = FeedbackStore(path)
    fill_store(store, n_prompts=2, n_seeds=4, generators=("base", "r1"))
    choices = ["a", "b", "tie", "skip"]
    for i in range(n):
        x, y = store.next_pair("alice" if i % 3 else "bob", rng=i)
        store.record_comparison(x["id"], y["id"], choices[i % 4], "alice" if i % 3 else "bob", f"cid-{i}")
    return store


@pytest.fixture
def source(tmp_path):
    with _labelled_store(tmp_path / "src") as s:
        yield s


@pytest.fixture
def exported(source, tmp_path):
    return source.export_parquet(tmp_path / "prefs.parquet", include_skips=True)


def _snapshot(store):
    files = sorted(p.relative_to(store.data_dir) for p in store.images_dir.rglob("*") if p.is_file())
    return store.counts(), store.comparisons(include_skips=True), [s["id"] for s in store.samples()], files


def test_export_has_pick_a_pic_columns(exported):
    t = pq.read_table(exported)
    assert t.schema.names == SCHEMA.names and len(SCHEMA.names) == 19
    assert all(t.schema.field(c).type == SCHEMA.field(c).type for c in SCHEMA.names)
    rows = t.to_pylist()
    labels = {(r["label_0"], r["label_1"], r["has_label"]) for r in rows}
    assert labels <= {(1.0, 0.0, True), (0.0, 1.0, True), (0.5, 0.5, True), (0.0, 0.0, False)}
    r = rows[0]
    assert r["jpg_0"][:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(r["jpg_0"])).format == "JPEG"
    assert Image.open(io.BytesIO(r["jpg_0"])).size == (64, 64) and r["are_different"]
    assert r["user_id"] == user_number("bob") and [r["__index_level_0__"] for r in rows] == list(range(len(rows)))
    for r in rows:
        best = {(1.0, 0.0): r["image_0_uid"], (0.0, 1.0): r["image_1_uid"]}.get((r["label_0"], r["label_1"]))
        assert r["best_image_uid"] == (best if r["has_label"] else None)
        assert r["num_example_per_prompt"] == sum(x["caption"] == r["caption"] for x in rows)


def _by_uid(store, rows):
    """Comparisons with each sample named by the uid an export gives it (its source uid, else its id)."""
    uid = {s["id"]: s["source_uid"] or s["id"] for s in store.samples()}
    keep = ("client_id", "prompt", "choice", "rater", "created_at", "generator_a", "generator_b")
    return [{**{k: r[k] for k in keep}, "a": uid[r["sample_a"]], "b": uid[r["sample_b"]]} for r in rows]


def test_export_import_round_trips_into_a_fresh_store(source, exported, tmp_path):
    with FeedbackStore(tmp_path / "dst") as dst:
        report = dst.import_parquet(exported)
        assert report["comparisons_added"] == 8 and report["comparisons_existing"] == 0 and report["bad_rows"] == []
        assert _by_uid(dst, dst.comparisons(include_skips=True)) == _by_uid(source, source.comparisons(include_skips=True))
        by_uid = {s["source_uid"]: s for s in dst.samples()}
        for sid in {r["sample_a"] for r in source.comparisons()}:
            s, d = source.get_sample(sid), by_uid[sid]  # the original uid is kept
            assert {k: s[k] for k in ("prompt", "seed", "steps", "guidance", "generator")} == \
                   {k: d[k] for k in ("prompt", "seed", "steps", "guidance", "generator")}
            diff = np.abs(np.asarray(source.load_image(sid), int) - np.asarray(dst.load_image(d["id"]), int))
            assert diff.mean() < 3  # a JPEG at quality 95 of the stored PNG
        before = _snapshot(dst)
        again = dst.import_parquet(exported)  # idempotent
        assert again["comparisons_added"] == 0 and again["comparisons_existing"] == 8
        assert _snapshot(dst) == before
        dst.export_parquet(tmp_path / "second.parquet", include_skips=True)  # and on: same uids, same JPEG bytes
        first, second = pq.read_table(exported).to_pylist(), pq.read_table(tmp_path / "second.parquet").to_pylist()
        assert [(r["image_0_uid"], r["jpg_0"], r["image_1_uid"], r["jpg_1"]) for r in first] == \
               [(r["image_0_uid"], r["jpg_0"], r["image_1_uid"], r["jpg_1"]) for r in second]
    before = _snapshot(source)
    assert source.import_parquet(exported)["comparisons_added"] == 0  # and into its own source: no copies either
    assert _snapshot(source) == before


def test_foreign_file_without_our_metadata_imports_idempotently(exported, tmp_path):
    t = pq.read_table(exported)
    foreign = tmp_path / "foreign.parquet"
    t = t.replace_schema_metadata(None).set_column(SCHEMA.names.index("user_id"), "user_id",
                                                   pa.array(list(range(len(t))), pa.int64()))
    pq.write_table(t, foreign)
    with FeedbackStore(tmp_path / "dst") as dst:
        assert dst.import_parquet(foreign)["comparisons_added"] == 8
        assert dst.import_parquet(foreign)["comparisons_added"] == 0
        assert {r["rater"] for r in dst.comparisons(include_skips=True)} == {str(i) for i in range(8)}
        out = pq.read_table(dst.export_parquet(tmp_path / "out.parquet", include_skips=True))
        assert sorted(out.column("user_id").to_pylist()) == list(range(8))  # numbers stay numbers


def _png(size, colour=0):
    buf = io.BytesIO()
    Image.new("L", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _edit(table: pa.Table, column: str, values, typ=None) -> pa.Table:
    arr = pa.array(values, typ) if typ is not None else pa.array(values)
    return table.set_column(table.schema.names.index(column), column, arr)


def _set_row0(table, column, value, typ=None):
    values = table.column(column).to_pylist()
    values[0] = value
    return _edit(table, column, values, typ or table.schema.field(column).type)


FILE_LEVEL = {  # the file is refused whatever `strict` says
    "missing column": lambda t: t.drop_columns(["label_1"]),
    "label as string": lambda t: _edit(t, "label_0", [str(v) for v in t.column("label_0").to_pylist()]),
    "image as string": lambda t: _edit(t, "jpg_0", ["x"] * len(t)),
    "bad metadata": lambda t: t.replace_schema_metadata({b"rlcm": b'{"format": 1, "client_ids": ["x"]}'}),
}
ROW_LEVEL = {  # row 0 is bad: refused with strict, else reported while the other rows import
    "undecodable image": lambda t: _set_row0(t, "jpg_0", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20),
    "not an image": lambda t: _set_row0(t, "jpg_1", b"GIF89a" + b"\x00" * 50),
    "truncated jpeg": lambda t: _set_row0(t, "jpg_0", t.column("jpg_0")[0].as_py()[:60]),
    "giant image": lambda t: _set_row0(t, "jpg_1", _png((3000, 3000))),
    "bad labels": lambda t: _edit(_set_row0(t, "label_0", 0.7), "label_1", [0.3] + t.column("label_1").to_pylist()[1:],
                                   pa.float64()),
    "nan label": lambda t: _set_row0(t, "label_0", float("nan")),
    "labels without has_label": lambda t: _set_row0(_set_row0(t, "label_0", 0.0), "label_1", 0.0),
    "path traversal uid": lambda t: _set_row0(t, "image_0_uid", "../../etc/passwd"),
    "slash in uid": lambda t: _set_row0(t, "image_1_uid", "a/b"),
    "null caption": lambda t: _set_row0(t, "caption", None),
    "NUL in caption": lambda t: _set_row0(t, "caption", "a red\x00circle"),
    "control chars in user": lambda t: _set_row0(_edit(t, "user_id", [str(v) for v in t.column("user_id").to_pylist()]),
                                                 "user_id", "bob\x00"),
    "bad model name": lambda t: _set_row0(t, "model_0", "../../../x"),
    "bad timestamp": lambda t: _set_row0(_edit(t, "created_at", [str(v) for v in t.column("created_at").to_pylist()]),
                                         "created_at", "yesterday"),
}


def _hostile(case, exported, tmp_path):
    t = pq.read_table(exported)
    if case == "labels without has_label":  # make row 0 labelled so (0, 0) contradicts has_label
        t = _set_row0(t, "has_label", True)
    bad = tmp_path / f"{case.replace(' ', '_')}.parquet"
    pq.write_table({**FILE_LEVEL, **ROW_LEVEL}[case](t), bad)
    return bad


@pytest.mark.parametrize("case", [*FILE_LEVEL, *ROW_LEVEL])
def test_hostile_import_with_strict_is_refused_and_changes_nothing(case, exported, tmp_path):
    bad = _hostile(case, exported, tmp_path)
    with _labelled_store(tmp_path / "target", n=3) as target:
        before = _snapshot(target)
        with pytest.raises(ValueError, match=None if case in FILE_LEVEL else "^row 0: "):
            target.import_parquet(bad, strict=True)
        if case in FILE_LEVEL:
            with pytest.raises(ValueError):
                target.import_parquet(bad)
        assert _snapshot(target) == before


@pytest.mark.parametrize("case", ROW_LEVEL)
def test_a_bad_row_is_reported_and_the_valid_rows_import(case, exported, tmp_path):
    bad = _hostile(case, exported, tmp_path)
    with FeedbackStore(tmp_path / "target") as target:
        report = target.import_parquet(bad)
        assert report["rows_rejected"] == 1 and report["bad_rows"][0]["row"] == 0, report["bad_rows"]
        assert report["comparisons_added"] == 7
        clean = FeedbackStore(tmp_path / "clean")
        clean.import_parquet(exported)
        kept = pq.read_table(exported).to_pylist()[1:]
        assert sorted(c["client_id"] for c in target.comparisons(include_skips=True)) == \
               sorted(c["client_id"] for c in clean.comparisons(include_skips=True) if c["client_id"] != "cid-0")
        assert len(kept) == 7
        files = {p.name for p in target.images_dir.rglob("*") if p.is_file()}
        assert files == {Path(target.image_path(s["id"])).name for s in target.samples()}  # no stray files
        clean.close()


def test_failure_late_in_the_transaction_rolls_back_rows_and_images(source, exported, tmp_path):
    # the target already used client id "cid-0" for another pair: found only while inserting rows
    theirs = source.comparisons()[0]
    assert theirs["client_id"] == "cid-0"
    with _labelled_store(tmp_path / "target", n=0) as target:
        other = [s["id"] for s in target.samples() if s["prompt"] != theirs["prompt"]][:2]
        target.record_comparison(other[0], other[1], "a", "bob", "cid-0")
        target.record_comparison(theirs["sample_a"], theirs["sample_b"], "b", "bob", "mine")
        before = _snapshot(target)
        with pytest.raises(ValueError, match="already used"):
            target.import_parquet(exported, strict=True)
        assert _snapshot(target) == before
        report = target.import_parquet(exported)  # without strict: that row is reported, the others go in
        assert report["rows_rejected"] == 1 and "already used" in report["bad_rows"][0]["error"]


def test_not_parquet_and_too_many_rows_are_refused(exported, tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 definitely not parquet")
    from feedback.parquet import ImportLimits, import_parquet

    with FeedbackStore(tmp_path / "dst") as dst:
        with pytest.raises(ValueError, match="not a readable Parquet"):
            dst.import_parquet(junk)
        with pytest.raises(ValueError, match="rows; the limit"):
            import_parquet(dst, exported, ImportLimits(max_rows=3))
        with pytest.raises(ValueError, match="the limit is 100"):
            import_parquet(dst, exported, ImportLimits(max_image_bytes=100), strict=True)
        report = import_parquet(dst, exported, ImportLimits(max_image_bytes=100))  # every row bad, each reported
        assert report["rows_rejected"] == 8 and "the limit is 100" in report["bad_rows"][0]["error"]
        assert dst.counts()["samples"] == 0


def test_snapshot_and_restore_latest(source, tmp_path):
    backups = tmp_path / "bucket"
    first = source.snapshot(backups)
    source.record_comparison(*[s["id"] for s in source.next_pair("zoe", rng=0)], "a", "zoe", "late")
    second = source.snapshot(backups)
    assert first != second and sorted(backups.glob("feedback-*.db")) == [first, second]
    (backups / "feedback-99999999T000000000000Z.db").write_bytes(b"torn upload")  # newest, but broken
    live = tmp_path / "fresh"
    assert FeedbackStore.restore_latest(backups, live) == second
    with FeedbackStore(live) as restored:
        assert restored.counts() == source.counts()
        sid = restored.comparisons()[0]["sample_a"]
        assert np.array_equal(np.asarray(restored.load_image(sid)), np.asarray(source.load_image(sid)))
    assert FeedbackStore.restore_latest(backups, live) is None  # never overwrites a live database
    assert FeedbackStore.restore_latest(tmp_path / "empty", tmp_path / "other") is None
    conn = sqlite3.connect(second)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_cli(source, tmp_path, capsys):
    d = str(source.data_dir)
    assert cli(["stats", "--data-dir", d]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["comparisons"] == 8
    out = tmp_path / "cli.parquet"
    assert cli(["export", "--data-dir", d, "--out", str(out)]) == 0 and out.exists()
    capsys.readouterr()
    assert cli(["import", "--data-dir", str(tmp_path / "new"), str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["comparisons_added"] == 6  # skips were not exported
    assert cli(["snapshot", "--data-dir", d, "--backup-dir", str(tmp_path / "bk")]) == 0
    assert cli(["restore", "--data-dir", str(tmp_path / "restored"), "--backup-dir", str(tmp_path / "bk")]) == 0
    assert (tmp_path / "restored" / "feedback.db").exists()
    capsys.readouterr()
    assert cli(["simulate", "--data-dir", d, "--rater", f"{ROOT}/feedback/example_rater.py:prefer", "--name", "ex", "--n", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["recorded"] == 5
    assert cli(["import", "--data-dir", d, str(tmp_path / "missing.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
