"""Preference data in and out as Parquet with the Pick-a-Pic v2 columns, so tools built for that dataset read ours.

Columns: caption, jpg_0, jpg_1 (image bytes; ours are PNG), label_0, label_1 (1/0, 0/1, or 0.5 each for a
tie), image_0_uid, image_1_uid (our sample ids), model_0, model_1 (generator), user_id (rater name, a
string), has_label (False for a skip), are_different, created_at. What Pick-a-Pic has no column for
(seeds, steps, guidance, client ids) travels in the file's key-value metadata under `rlcm`, so our own
files round-trip exactly and foreign files still import.

Import trusts nothing: every column type, label, name and image is checked (images decoded, sizes
limited), all before anything is written; then images and rows go in, the rows in one transaction.
Any problem raises ValueError naming the row and nothing changes. Re-importing a file adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import images as imgs
from .store import MAX_CLIENT_ID, FeedbackStore, check_name, check_prompt

SCHEMA = pa.schema([
    ("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
    ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("image_0_uid", pa.string()), ("image_1_uid", pa.string()),
    ("model_0", pa.string()), ("model_1", pa.string()), ("user_id", pa.string()),
    ("has_label", pa.bool_()), ("are_different", pa.bool_()), ("created_at", pa.timestamp("us", tz="UTC")),
])
LABELS = {(1.0, 0.0): "a", (0.0, 1.0): "b", (0.5, 0.5): "tie"}
META_KEY = b"rlcm"
UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # uuids and hex digests; no separators, no ".."
MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+/-]{0,99}")  # generator names such as "org/model-1.0"


@dataclass
class ImportLimits:
    max_file_bytes: int = 2 * 1024**3  # refuse larger Parquet files outright
    max_rows: int = 200_000  # rows per file
    max_image_bytes: int = imgs.MAX_BYTES  # per encoded image
    max_image_side: int = imgs.MAX_SIDE  # per image side in pixels


# ---------------------------------------------------------------- export

def _label(choice: str) -> tuple[float, float, bool]:
    return {"a": (1.0, 0.0, True), "b": (0.0, 1.0, True), "tie": (0.5, 0.5, True), "skip": (0.0, 0.0, False)}[choice]


def export_parquet(store: FeedbackStore, path: str | Path, include_skips: bool = False, batch: int = 256) -> Path:
    """Write every live comparison (skips only if asked) with both images; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = store.comparisons(include_skips=include_skips)
    sample_meta = {}
    for r in rows:
        for sid in (r["sample_a"], r["sample_b"]):
            if sid not in sample_meta:
                s = store.get_sample(sid)
                sample_meta[sid] = {"seed": s["seed"], "steps": s["steps"], "guidance": s["guidance"]}
    meta = {"format": 1, "client_ids": [r["client_id"] for r in rows], "samples": sample_meta}
    schema = SCHEMA.with_metadata({META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for i in range(0, max(len(rows), 1), batch):
            chunk = rows[i:i + batch]
            cols: dict[str, list] = {name: [] for name in SCHEMA.names}
            for r in chunk:
                l0, l1, has = _label(r["choice"])
                for k, v in (("caption", r["prompt"]), ("jpg_0", store.image_path(r["sample_a"]).read_bytes()),
                             ("jpg_1", store.image_path(r["sample_b"]).read_bytes()), ("label_0", l0),
                             ("label_1", l1), ("image_0_uid", r["sample_a"]), ("image_1_uid", r["sample_b"]),
                             ("model_0", r["generator_a"]), ("model_1", r["generator_b"]), ("user_id", r["rater"]),
                             ("has_label", has), ("are_different", r["sample_a"] != r["sample_b"]),
                             ("created_at", datetime.fromisoformat(r["created_at"]))):
                    cols[k].append(v)
            writer.write_table(pa.table(cols, schema=schema))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- import: validation

def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


_TYPE_RULES = {  # column -> (predicate on the Arrow type, what is valid)
    "caption": (_is_string, "string"),
    "jpg_0": (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), "binary"),
    "jpg_1": (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), "binary"),
    "label_0": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "float or int"),
    "label_1": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "float or int"),
    "image_0_uid": (_is_string, "string"),
    "image_1_uid": (_is_string, "string"),
    "model_0": (lambda t: _is_string(t) or pa.types.is_null(t), "string"),
    "model_1": (lambda t: _is_string(t) or pa.types.is_null(t), "string"),
    "user_id": (lambda t: _is_string(t) or pa.types.is_integer(t), "string or int"),
    "has_label": (pa.types.is_boolean, "bool"),
    "are_different": (pa.types.is_boolean, "bool"),
    "created_at": (lambda t: pa.types.is_timestamp(t) or _is_string(t), "timestamp or ISO 8601 string"),
}


def _check_schema(schema: pa.Schema) -> None:
    missing = [c for c in SCHEMA.names if c not in schema.names]
    if missing:
        raise ValueError(f"missing column(s) {missing}; a Pick-a-Pic file has {SCHEMA.names}")
    for name, (ok, valid) in _TYPE_RULES.items():
        t = schema.field(name).type
        if not ok(t):
            raise ValueError(f"column {name!r} has type {t}; valid: {valid}")


def _check_meta(raw: bytes | None, n_rows: int) -> dict:
    if raw is None:
        return {"client_ids": None, "samples": {}}
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ValueError("the file's 'rlcm' metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != 1:
        raise ValueError("the file's 'rlcm' metadata must be an object with format 1")
    ids, samples = meta.get("client_ids"), meta.get("samples", {})
    if ids is not None:
        if not isinstance(ids, list) or len(ids) != n_rows:
            raise ValueError(f"'rlcm' metadata client_ids must be a list of {n_rows} strings")
        for i in ids:
            check_name(i, "client_id in 'rlcm' metadata", MAX_CLIENT_ID)
    if not isinstance(samples, dict):
        raise ValueError("'rlcm' metadata samples must be an object")
    for uid, m in samples.items():
        if not (isinstance(uid, str) and UID.fullmatch(uid) and ".." not in uid and isinstance(m, dict)):
            raise ValueError(f"'rlcm' metadata has a bad sample entry {str(uid)[:80]!r}")
        for k, kind in (("seed", int), ("steps", int), ("guidance", (int, float))):
            v = m.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, kind)):
                raise ValueError(f"'rlcm' metadata: {k} of sample {uid!r} must be a number or null")
    return {"client_ids": ids, "samples": samples}


def _uid(value, where: str) -> str:
    if not isinstance(value, str) or not UID.fullmatch(value) or ".." in value:
        raise ValueError(f"{where}: image uid {str(value)[:80]!r} is not a plain id "
                         "(letters, digits, '_', '.', '-'; no path separators or '..')")
    return value


def _model(value, where: str) -> str:
    if value is None:
        return "imported"
    if not isinstance(value, str) or not MODEL.fullmatch(value) or ".." in value:
        raise ValueError(f"{where}: model name {str(value)[:80]!r} is not a plain name")
    return value


def _created_at(value, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{where}: created_at {value[:40]!r} is not ISO 8601") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _choice(l0, l1, has_label, where: str) -> str:
    try:
        key = (float(l0), float(l1))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: labels must be numbers, got {l0!r}, {l1!r}") from None
    if not all(math.isfinite(v) for v in key) or (key not in LABELS and key != (0.0, 0.0)):
        raise ValueError(f"{where}: label_0/label_1 must be 1/0, 0/1 or 0.5/0.5 (0/0 without a label); got {key}")
    if has_label is None:
        raise ValueError(f"{where}: has_label is null")
    if not has_label:
        return "skip"
    if key not in LABELS:
        raise ValueError(f"{where}: has_label is true but labels are {key}")
    return LABELS[key]


# ---------------------------------------------------------------- import

def import_parquet(store: FeedbackStore, path: str | Path, limits: ImportLimits = ImportLimits()) -> dict:
    """Validate a whole Pick-a-Pic style file, then add its samples and comparisons; returns a report.

    Raises ValueError (nothing changed) on any problem. Rows whose two images are identical are
    skipped and counted. Rows already imported (same client id) are counted as existing.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file {path}")
    if path.stat().st_size > limits.max_file_bytes:
        raise ValueError(f"{path} is {path.stat().st_size} bytes; the limit is {limits.max_file_bytes}")
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except Exception as e:
        raise ValueError(f"{path} is not a readable Parquet file: {e}") from None
    _check_schema(schema)
    n = pf.metadata.num_rows
    if n > limits.max_rows:
        raise ValueError(f"{path} has {n} rows; the limit is {limits.max_rows}")
    meta = _check_meta((schema.metadata or {}).get(META_KEY), n)

    samples: dict[str, dict] = {}  # sample id -> png bytes, prompt, size, metadata
    rows: list[dict] = []
    skipped = 0
    i = 0
    try:
        batches = pf.iter_batches(batch_size=64, columns=SCHEMA.names)
        for batch in batches:
            for r in batch.to_pylist():
                where = f"row {i}"
                prompt = check_prompt(r["caption"], f"{where}: caption")
                choice = _choice(r["label_0"], r["label_1"], r["has_label"], where)
                rater = str(r["user_id"]) if isinstance(r["user_id"], int) else r["user_id"]
                rater = check_name(rater, f"{where}: user_id")
                created = _created_at(r["created_at"], where)
                ids = []
                for k in (0, 1):
                    uid = _uid(r[f"image_{k}_uid"], where)
                    if r[f"jpg_{k}"] is None:
                        raise ValueError(f"{where}: jpg_{k} is missing")
                    try:
                        image = imgs.decode_checked(r[f"jpg_{k}"], limits.max_image_bytes, limits.max_image_side)
                    except ValueError as e:
                        raise ValueError(f"{where}: jpg_{k}: {e}") from None
                    data = imgs.png_bytes(image)
                    sid = imgs.sha256(data)
                    m = meta["samples"].get(uid, {})
                    known = samples.get(sid)
                    if known is not None and known["prompt"] != prompt:
                        raise ValueError(f"{where}: the same image appears under two captions")
                    samples.setdefault(sid, {"png": data, "prompt": prompt, "size": image.size,
                                             "generator": _model(r[f"model_{k}"], where), "seed": m.get("seed"),
                                             "steps": m.get("steps"), "guidance": m.get("guidance"),
                                             "created_at": created})
                    ids.append(sid)
                if ids[0] == ids[1]:
                    skipped += 1
                else:
                    cid = meta["client_ids"][i] if meta["client_ids"] else "import:" + hashlib.sha256(json.dumps(
                        [prompt, r["image_0_uid"], r["image_1_uid"], rater, created, choice]).encode()).hexdigest()[:40]
                    rows.append({"a": ids[0], "b": ids[1], "choice": choice, "rater": rater, "client_id": cid,
                                 "created_at": created})
                i += 1
    except ValueError:
        raise
    except Exception as e:  # pyarrow decoding errors on a corrupt file
        raise ValueError(f"row {i}: cannot read {path}: {type(e).__name__}: {e}") from None

    report = {"rows": n, "skipped_identical": skipped, "samples_added": 0, "samples_existing": 0,
              "comparisons_added": 0, "comparisons_existing": 0}
    written: list[Path] = []
    with store._write_lock:  # images first (content-addressed); the new ones go again if the rows fail
        try:
            with store._write() as db:
                for sid, s in samples.items():
                    if imgs.write_atomic(store.image_path(sid), s["png"]):
                        written.append(store.image_path(sid))
                for sid, s in samples.items():
                    _insert_sample(store, db, sid, s, report)
                for j, r in enumerate(rows):
                    try:
                        row = store._insert_comparison(db, r["a"], r["b"], r["choice"], r["rater"], r["client_id"],
                                                       r["created_at"])
                    except ValueError as e:
                        raise ValueError(f"comparison {j}: {e}") from None
                    report["comparisons_added" if row["created"] else "comparisons_existing"] += 1
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
    return report


def _insert_sample(store: FeedbackStore, db, sid: str, s: dict, report: dict) -> None:
    existing = db.execute("SELECT p.text FROM samples s JOIN prompts p ON p.id = s.prompt_id WHERE s.id = ?",
                          [sid]).fetchone()
    if existing is not None and existing[0] != s["prompt"]:
        raise ValueError(f"image {sid[:12]}… is already stored under another prompt ({existing[0]!r})")
    added = store._insert_sample(db, sid, s["prompt"], s["size"], s["seed"], s["steps"], s["guidance"],
                                 s["generator"], s["created_at"])
    report["samples_added" if added else "samples_existing"] += 1
