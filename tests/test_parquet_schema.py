"""Our Parquet is the published Pick-a-Pic v2 file format: `datasets` loads it and concatenates it with real rows;
a file in the published schema imports with its JPEG bytes, uids and user ids kept, and exports back the same."""

from __future__ import annotations

import io
import uuid
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from feedback import FeedbackStore
from tests.fixtures_rm import fill_store, render

# the published schema, written out here (not imported from feedback.parquet) so a drift of ours shows
PUBLISHED = pa.schema([
    ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
    ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()), ("image_0_uid", pa.string()),
    ("image_0_url", pa.string()), ("image_1_uid", pa.string()), ("image_1_url", pa.string()),
    ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("model_0", pa.string()), ("model_1", pa.string()), ("ranking_id", pa.int64()), ("user_id", pa.int64()),
    ("num_example_per_prompt", pa.int64()), ("__index_level_0__", pa.int64()),
])


def _jpeg(seed: int, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    render(seed).resize((96, 96)).save(buf, "JPEG", quality=quality)  # their encoder, not ours
    return buf.getvalue()


def published_rows(n: int = 6, odd_row: int | None = None) -> pa.Table:
    """Rows as pickapic_v2 holds them: uuids, int user ids, URLs, naive timestamps, JPEGs of another encoder."""
    rows = []
    for i in range(n):
        u0, u1 = str(uuid.UUID(int=2 * i + 1)), str(uuid.UUID(int=2 * i + 2))
        l0, l1 = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)][i % 3]
        caption = f"a photo number {i // 2}" + ("\x07" if i == odd_row else "")
        rows.append({"are_different": True, "best_image_uid": {1.0: u0, 0.0: u1}.get(l0, ""), "caption": caption,
                     "created_at": datetime(2023, 4, 1, 12, i), "has_label": True, "image_0_uid": u0,
                     "image_0_url": f"https://example.invalid/{u0}.png", "image_1_uid": u1,
                     "image_1_url": f"https://example.invalid/{u1}.png", "jpg_0": _jpeg(10 * i), "jpg_1": _jpeg(10 * i + 1),
                     "label_0": l0, "label_1": l1, "model_0": "sdxl:alpha", "model_1": "sdxl:beta",
                     "ranking_id": 9000 + i, "user_id": 4200 + i % 2, "num_example_per_prompt": 2,
                     "__index_level_0__": 70 + i})
    return pa.Table.from_pylist(rows, schema=PUBLISHED)


@pytest.fixture
def ours(tmp_path):
    with FeedbackStore(tmp_path / "ours") as store:
        fill_store(store, n_prompts=2, n_seeds=3)
        for i, choice in enumerate(("a", "b", "tie", "a")):
            x, y = store.next_pair("alice", rng=i)
            store.record_comparison(x["id"], y["id"], choice, "alice", f"c{i}")
        yield store.export_parquet(tmp_path / "ours.parquet")


def test_datasets_loads_an_export_and_concatenates_it_with_published_rows(ours, tmp_path):
    import datasets

    published = tmp_path / "published.parquet"
    pq.write_table(published_rows(), published)
    a = datasets.load_dataset("parquet", data_files=str(ours), split="train", cache_dir=str(tmp_path / "hf"))
    b = datasets.load_dataset("parquet", data_files=str(published), split="train", cache_dir=str(tmp_path / "hf"))
    assert a.features == b.features and len(a) == 4
    both = datasets.concatenate_datasets([a, b])
    assert len(both) == 10 and both[0]["caption"] == a[0]["caption"] and both[4]["ranking_id"] == 9000
    assert isinstance(both[0]["user_id"], int) and both[0]["jpg_0"][:3] == b"\xff\xd8\xff"


def test_a_published_file_imports_with_its_bytes_uids_and_users_and_exports_back_the_same(tmp_path):
    src = published_rows()
    path = tmp_path / "published.parquet"
    pq.write_table(src, path)
    with FeedbackStore(tmp_path / "store") as store:
        report = store.import_parquet(path)
        assert report["comparisons_added"] == 6 and report["samples_added"] == 12 and report["bad_rows"] == []
        by_uid = {s["source_uid"]: s for s in store.samples()}
        for r in src.to_pylist():
            for k in (0, 1):
                sample = by_uid[r[f"image_{k}_uid"]]
                stored = store.image_path(sample["id"])
                assert stored.suffix == ".jpg" and stored.read_bytes() == r[f"jpg_{k}"]  # the original JPEG bytes
        assert {c["rater"] for c in store.comparisons()} == {"4200", "4201"}
        out = pq.read_table(store.export_parquet(tmp_path / "again.parquet")).to_pylist()
    for mine, theirs in zip(out, src.to_pylist()):
        for key in ("caption", "created_at", "image_0_uid", "image_1_uid", "jpg_0", "jpg_1", "label_0", "label_1",
                    "model_0", "model_1", "user_id", "has_label"):
            assert mine[key] == theirs[key], key


def test_one_odd_caption_rejects_its_row_only_unless_strict(tmp_path):
    path = tmp_path / "odd.parquet"
    pq.write_table(published_rows(odd_row=3), path)
    with FeedbackStore(tmp_path / "strict") as store:
        with pytest.raises(ValueError, match="^row 3: caption must be printable"):
            store.import_parquet(path, strict=True)
        assert store.counts()["samples"] == 0 and not any(store.images_dir.rglob("*.*"))
    with FeedbackStore(tmp_path / "lenient") as store:
        report = store.import_parquet(path)
        assert [b["row"] for b in report["bad_rows"]] == [3] and "printable" in report["bad_rows"][0]["error"]
        assert report["comparisons_added"] == 5 and store.counts()["comparisons"] == 5
        assert report["samples_added"] == 10  # the bad row's two images are not kept
        assert sum(1 for _ in store.images_dir.rglob("*.jpg")) == 10

