"""Preference data in and out as Parquet in the published Pick-a-Pic v2 schema, so tools built for it read ours.

Export writes the 19 columns of `yuvalkirstain/pickapic_v2` with their types (SCHEMA): `jpg_0`/`jpg_1` hold
JPEG bytes (an imported JPEG exactly as it came, a generated image at quality 95), `image_*_uid` the uid each
image came with (our sample id for our own), `user_id` an int64 (a rater name maps to a stable number; a
number that came from a file maps back to itself), `ranking_id` our comparison id, `best_image_uid` the
preferred image (null for a tie or skip), the URLs null. What Pick-a-Pic has no column for (seeds, steps,
guidance, client ids, rater names) travels in the file's key-value metadata under `rlcm`, so our files
round-trip and foreign files still import; `datasets.load_dataset("parquet", ...)` reads an export and
concatenates it with the published data.

Import trusts nothing. The file's schema and metadata are checked first (a problem refuses the file); then
every row (labels, names, uids, images decoded with size limits). A bad row is reported and left out while
the valid rows go in, or, with `strict=True`, refuses the whole file with nothing changed. The writing is
the store's `import_records` (one transaction). Re-importing a file adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from . import identity
from . import images as imgs
from .checks import check_name, check_prompt
from .pairs import LABEL

if TYPE_CHECKING:
    from .store import FeedbackStore

SCHEMA = pa.schema([  # the published pickapic_v2 columns, in its order, with its types
    ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
    ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()),
    ("image_0_uid", pa.string()), ("image_0_url", pa.string()), ("image_1_uid", pa.string()),
    ("image_1_url", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
    ("label_0", pa.float64()), ("label_1", pa.float64()), ("model_0", pa.string()), ("model_1", pa.string()),
    ("ranking_id", pa.int64()), ("user_id", pa.int64()), ("num_example_per_prompt", pa.int64()),
    ("__index_level_0__", pa.int64()),
])
REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid", "image_1_uid", "model_0", "model_1",
            "user_id", "has_label", "are_different", "created_at")  # what import needs; the rest is optional
LABELS = {(p, 1.0 - p): choice for choice, p in LABEL.items()}  # (label_0, label_1) -> choice
META_KEY = b"rlcm"
META_FORMATS = (1, 2)  # 2 adds "raters" (user_id -> rater name)
UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # uuids and hex digests; no separators, no ".."
MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+/-]{0,99}")  # generator names such as "org/model-1.0"
MAX_REPORTED = 100  # bad rows listed in an import report (all are counted)


@dataclass
class ImportLimits:
    max_file_bytes: int = 2 * 1024**3  # refuse larger Parquet files outright
    max_rows: int = 200_000  # rows per file
    max_image_bytes: int = imgs.MAX_BYTES  # per encoded image
    max_image_side: int = imgs.MAX_SIDE  # per image side in pixels


# ---------------------------------------------------------------- export

def _label(choice: str) -> tuple[float, float, bool]:
    if choice == "skip":  # Pick-a-Pic's unlabelled row
        return 0.0, 0.0, False
    return LABEL[choice], 1.0 - LABEL[choice], True


def user_number(rater: str) -> int:
    """Pick-a-Pic's int64 user_id for a rater name: a number keeps its value, a name gets a stable 63-bit hash."""
    if rater.isdigit() and rater.isascii() and int(rater) < 2**63:
        return int(rater)
    return int.from_bytes(hashlib.sha256(rater.encode()).digest()[:8], "big") >> 1


def _utc_naive(iso: str) -> datetime:
    t = datetime.fromisoformat(iso)
    return (t.astimezone(timezone.utc) if t.tzinfo else t).replace(tzinfo=None)


def export_parquet(store: FeedbackStore, path: str | Path, include_skips: bool = False, batch: int = 256) -> Path:
    """Write every live comparison (skips only if asked) with both images; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = store.comparisons(include_skips=include_skips)
    samples = {sid: store.get_sample(sid) for r in rows for sid in (r["sample_a"], r["sample_b"])}
    uid = {sid: s["source_uid"] or sid for sid, s in samples.items()}
    per_prompt = Counter(r["prompt"] for r in rows)
    meta = {"format": 2, "client_ids": [r["client_id"] for r in rows],
            "samples": {uid[sid]: {k: s[k] for k in ("seed", "steps", "guidance")} for sid, s in samples.items()},
            "raters": {str(user_number(r["rater"])): r["rater"] for r in rows}}

    @lru_cache(maxsize=1024)  # a sample is in many rows
    def jpeg(sid: str) -> bytes:
        file = store.image_path(sid)
        data = file.read_bytes()
        return data if imgs.image_format(data) == "JPEG" else imgs.jpeg_bytes(store.load_image(sid))

    schema = SCHEMA.with_metadata({META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for i in range(0, max(len(rows), 1), batch):
            cols: dict[str, list] = {name: [] for name in SCHEMA.names}
            for j, r in enumerate(rows[i:i + batch], start=i):
                a, b = r["sample_a"], r["sample_b"]
                l0, l1, has = _label(r["choice"])
                best = {"a": uid[a], "b": uid[b]}.get(r["choice"])
                for k, v in (("are_different", a != b), ("best_image_uid", best), ("caption", r["prompt"]),
                             ("created_at", _utc_naive(r["created_at"])), ("has_label", has),
                             ("image_0_uid", uid[a]), ("image_0_url", None), ("image_1_uid", uid[b]),
                             ("image_1_url", None), ("jpg_0", jpeg(a)), ("jpg_1", jpeg(b)), ("label_0", l0),
                             ("label_1", l1), ("model_0", r["generator_a"]), ("model_1", r["generator_b"]),
                             ("ranking_id", r["id"]), ("user_id", user_number(r["rater"])),
                             ("num_example_per_prompt", per_prompt[r["prompt"]]), ("__index_level_0__", j)):
                    cols[k].append(v)
            writer.write_table(pa.table(cols, schema=schema))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- import: the file

def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


_TYPE_RULES = {  # column -> (predicate on the Arrow type, what is valid)
    "caption": (_is_string, "string"),
    "jpg_0": (_is_binary, "binary"),
    "jpg_1": (_is_binary, "binary"),
    "label_0": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "float or int"),
    "label_1": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "float or int"),
    "image_0_uid": (_is_string, "string"),
    "image_1_uid": (_is_string, "string"),
    "model_0": (lambda t: _is_string(t) or pa.types.is_null(t), "string"),
    "model_1": (lambda t: _is_string(t) or pa.types.is_null(t), "string"),
    "user_id": (lambda t: _is_string(t) or pa.types.is_integer(t), "int64 or string"),
    "has_label": (pa.types.is_boolean, "bool"),
    "are_different": (pa.types.is_boolean, "bool"),
    "created_at": (lambda t: pa.types.is_timestamp(t) or _is_string(t), "timestamp or ISO 8601 string"),
    "best_image_uid": (lambda t: _is_string(t) or pa.types.is_null(t), "string"),
    "image_0_url": (lambda t: _is_string(t) or pa.types.is_null(t), "string"),
    "image_1_url": (lambda t: _is_string(t) or pa.types.is_null(t), "string"),
    "ranking_id": (lambda t: pa.types.is_integer(t) or pa.types.is_null(t), "int64"),
    "num_example_per_prompt": (lambda t: pa.types.is_integer(t) or pa.types.is_null(t), "int64"),
}


def _check_schema(schema: pa.Schema) -> None:
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise ValueError(f"missing column(s) {missing}; a Pick-a-Pic v2 file has {SCHEMA.names}")
    for name, (ok, valid) in _TYPE_RULES.items():
        if name in schema.names and not ok(schema.field(name).type):
            raise ValueError(f"column {name!r} has type {schema.field(name).type}; valid: {valid}")


def _check_meta(raw: bytes | None, n_rows: int) -> dict:
    if raw is None:
        return {"client_ids": None, "samples": {}, "raters": {}}
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ValueError("the file's 'rlcm' metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") not in META_FORMATS:
        raise ValueError(f"the file's 'rlcm' metadata must be an object with format {' or '.join(map(str, META_FORMATS))}")
    ids, samples, raters = meta.get("client_ids"), meta.get("samples", {}), meta.get("raters", {})
    if ids is not None and (not isinstance(ids, list) or len(ids) != n_rows or not all(isinstance(i, str) for i in ids)):
        raise ValueError(f"'rlcm' metadata client_ids must be a list of {n_rows} strings")
    if not isinstance(samples, dict) or not isinstance(raters, dict):
        raise ValueError("'rlcm' metadata samples and raters must be objects")
    for uid, m in samples.items():
        if not (UID.fullmatch(uid) and ".." not in uid and isinstance(m, dict)):
            raise ValueError(f"'rlcm' metadata has a bad sample entry {uid[:80]!r}")
        for k, kind in (("seed", int), ("steps", int), ("guidance", (int, float))):
            v = m.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, kind)):
                raise ValueError(f"'rlcm' metadata: {k} of sample {uid!r} must be a number or null")
    if not all(k.isdigit() and isinstance(v, str) for k, v in raters.items()):
        raise ValueError("'rlcm' metadata raters must map user_id numbers to names")
    return {"client_ids": ids, "samples": samples, "raters": raters}


# ---------------------------------------------------------------- import: one row

def _uid(value) -> str:
    if not isinstance(value, str) or not UID.fullmatch(value) or ".." in value:
        raise ValueError(f"image uid {str(value)[:80]!r} is not a plain id "
                         "(letters, digits, '_', '.', '-'; no path separators or '..')")
    return value


def _model(value) -> str:
    if value is None:
        return "imported"
    if not isinstance(value, str) or not MODEL.fullmatch(value) or ".." in value:
        raise ValueError(f"model name {str(value)[:80]!r} is not a plain name")
    return check_name(value, "model name")


def _created_at(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"created_at {value[:40]!r} is not ISO 8601") from None
    if value.tzinfo is None:  # Pick-a-Pic's timestamps are naive UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _choice(l0, l1, has_label) -> str:
    try:
        key = (float(l0), float(l1))
    except (TypeError, ValueError):
        raise ValueError(f"labels must be numbers, got {l0!r}, {l1!r}") from None
    if not all(math.isfinite(v) for v in key) or (key not in LABELS and key != (0.0, 0.0)):
        raise ValueError(f"label_0/label_1 must be 1/0, 0/1 or 0.5/0.5 (0/0 without a label); got {key}")
    if has_label is None:
        raise ValueError("has_label is null")
    if not has_label:
        return "skip"
    if key not in LABELS:
        raise ValueError(f"has_label is true but labels are {key}")
    return LABELS[key]


def _rater(value, names: dict) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return names.get(str(value), str(value))
    return value  # a name (older exports of ours); check_name judges it


# ---------------------------------------------------------------- import

def _read_rows(pf: pq.ParquetFile, columns: list[str], path: Path):
    i = 0
    try:
        for batch in pf.iter_batches(batch_size=64, columns=columns):
            for r in batch.to_pylist():
                yield i, r
                i += 1
    except Exception as e:  # pyarrow decoding errors on a corrupt file
        raise ValueError(f"row {i}: cannot read {path}: {type(e).__name__}: {e}") from None


def import_parquet(store: FeedbackStore, path: str | Path, limits: ImportLimits = ImportLimits(),
                   strict: bool = False) -> dict:
    """Import a Pick-a-Pic style file into `store`; returns a report.

    A file-level problem (not Parquet, missing columns, wrong types, bad metadata, too large) raises
    ValueError and changes nothing. A bad row is listed in the report's "bad_rows" ({"row", "error"}, the
    first MAX_REPORTED of "rows_rejected") and left out; with `strict`, it raises ValueError instead and
    nothing changes. Rows whose two images are identical are skipped and counted; rows imported before
    (same client id) are counted as existing.
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

    bad: list[dict] = []
    samples: dict[str, dict] = {}  # sha256 of the bytes -> sample record
    by_uid: dict[str, str] = {}  # uid -> sha256 of its bytes in this file
    parsed: list[dict] = []
    skipped = 0
    for i, r in _read_rows(pf, list(REQUIRED), path):
        try:
            caption = check_prompt(r["caption"], "caption")
            choice = _choice(r["label_0"], r["label_1"], r["has_label"])
            rater = check_name(_rater(r["user_id"], meta["raters"]), "user_id", identity.MAX_STORED_RATER)
            created = _created_at(r["created_at"])
            images = []
            for k in (0, 1):
                uid = _uid(r[f"image_{k}_uid"])
                raw = r[f"jpg_{k}"]
                if raw is None:
                    raise ValueError(f"jpg_{k} is missing")
                try:
                    image = imgs.decode_checked(raw, limits.max_image_bytes, limits.max_image_side)
                except ValueError as e:
                    raise ValueError(f"jpg_{k}: {e}") from None
                digest = imgs.sha256(bytes(raw))
                if by_uid.get(uid, digest) != digest:
                    raise ValueError(f"image uid {uid!r} names two different images in this file")
                known = samples.get(digest)
                if known is not None and known["prompt"] != caption:
                    raise ValueError("the same image appears under two captions")
                m = meta["samples"].get(uid, {})
                images.append((uid, digest, {
                    "data": bytes(raw), "prompt": caption, "size": image.size, "generator": _model(r[f"model_{k}"]),
                    "seed": m.get("seed"), "steps": m.get("steps"), "guidance": m.get("guidance"),
                    "created_at": created, "source_uid": uid, "ref": f"row {i}"}))
        except ValueError as e:
            if strict:
                raise ValueError(f"row {i}: {e}") from None
            bad.append({"row": i, "error": str(e)})
            continue
        for uid, digest, record in images:
            by_uid.setdefault(uid, digest)
            samples.setdefault(digest, record)
        if images[0][1] == images[1][1]:
            skipped += 1
            continue
        cid = meta["client_ids"][i] if meta["client_ids"] else "import:" + hashlib.sha256(json.dumps(
            [caption, r["image_0_uid"], r["image_1_uid"], rater, created, choice]).encode()).hexdigest()[:40]
        parsed.append({"row": i, "uids": (images[0][0], images[1][0]), "digests": (images[0][1], images[1][1]),
                       "prompt": caption, "choice": choice, "rater": rater, "client_id": cid, "created_at": created})

    # a uid that is already a stored sample (ours, or one imported under it) means that sample: re-imports of
    # our own exports, whose images are JPEG re-encodings of the stored PNGs, add no second copy
    stored = store.samples_by_uid(list(by_uid))
    stored_prompts = {sid: store.get_sample(sid)["prompt"] for sid in set(stored.values())}
    comparisons = []
    for p in parsed:
        ids = [stored.get(uid, digest) for uid, digest in zip(p["uids"], p["digests"])]
        clash = [uid for uid, sid in zip(p["uids"], ids) if stored_prompts.get(sid, p["prompt"]) != p["prompt"]]
        if clash:
            msg = f"image uid {clash[0]!r} is stored under another prompt ({stored_prompts[stored[clash[0]]][:80]!r})"
            if strict:
                raise ValueError(f"row {p['row']}: {msg}")
            bad.append({"row": p["row"], "error": msg})
            continue
        comparisons.append({"a": ids[0], "b": ids[1], "choice": p["choice"], "rater": p["rater"],
                            "client_id": p["client_id"], "created_at": p["created_at"], "ref": f"row {p['row']}"})
    used = {sid for c in comparisons for sid in (c["a"], c["b"])}
    new = [s for d, s in samples.items() if d in used]  # images of valid rows that are not stored samples already
    for s in new:
        if s["source_uid"] == imgs.sha256(s["data"]):
            s["source_uid"] = None  # the uid is the id itself: nothing to remember
    result = store.import_records(new, comparisons, strict=strict)
    for e in result["errors"]:
        if e["kind"] == "comparison":  # a refused sample shows up in the comparisons that name it
            bad.append({"row": int(e["ref"].split()[-1]), "error": e["error"]})
    bad.sort(key=lambda b: b["row"])
    return {"rows": n, "rows_rejected": len(bad), "skipped_identical": skipped,
            **{k: v for k, v in result.items() if k != "errors"}, "bad_rows": bad[:MAX_REPORTED]}
