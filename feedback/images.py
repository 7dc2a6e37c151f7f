"""Content-addressed image files: canonical PNG bytes, their sha256 id, and checked decoding of untrusted bytes."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image

MAX_BYTES = 8 * 1024 * 1024  # an encoded image larger than this is refused
MAX_SIDE = 2048  # ... and so is one wider or taller than this (decompression bombs are tiny files)
FORMATS = ("PNG", "JPEG")
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


def png_bytes(image: Image.Image) -> bytes:
    """Canonical PNG encoding of an RGB image (no metadata, so equal pixels give equal bytes)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image, got {type(image).__name__}")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_path(root: Path, sample_id: str) -> Path:
    """Where a sample's PNG lives: `root/<id[:2]>/<id>.png` (ids are hex digests, never paths)."""
    if len(sample_id) != 64 or any(c not in "0123456789abcdef" for c in sample_id):
        raise ValueError(f"a sample id is a 64-character lowercase sha256 hex digest, got {sample_id!r}")
    return Path(root) / sample_id[:2] / f"{sample_id}.png"


def write_atomic(path: Path, data: bytes) -> bool:
    """Write `data` to `path` through a temporary file and a rename; False if the file already existed."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def decode_checked(data: bytes, max_bytes: int = MAX_BYTES, max_side: int = MAX_SIDE) -> Image.Image:
    """Decode untrusted PNG/JPEG bytes into an RGB image, or raise ValueError saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"image must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ValueError(f"image is {len(data)} bytes; the limit is {max_bytes}")
    if not any(data.startswith(m) for m in _MAGIC):
        raise ValueError(f"image bytes are neither PNG nor JPEG (valid formats: {', '.join(FORMATS)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(FORMATS))
            w, h = im.size
            if w < 1 or h < 1 or w > max_side or h > max_side:
                raise ValueError(f"image is {w}x{h}; each side must be between 1 and {max_side} pixels")
            im.load()
            return im.convert("RGB")
    except ValueError:
        raise
    except Exception as e:  # PIL raises many types on corrupt data
        raise ValueError(f"image bytes do not decode: {type(e).__name__}: {e}") from None
