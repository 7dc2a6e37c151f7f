"""The reward-model zip import checks declared sizes before it reads, and never reads past them (zip bombs)."""

from __future__ import annotations

import importlib
import json
import struct
import tracemalloc
import zipfile

import pytest

import reward_model

export = importlib.import_module("reward_model.export")  # the package re-exports a function of that name

CONFIG = json.dumps({"format": "x"}).encode()


def bomb(path, size, name="model.safetensors", entries=()):
    """A zip whose `name` is `size` zero bytes: tiny on disk, huge when read."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("config.json", CONFIG)
        with z.open(name, "w", force_zip64=size > 0x7FFFFFFF) as f:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
        for e in entries:
            z.writestr(e, b"")
    return path


def lie_about_size(path, name, declared):
    """Rewrite `name`'s uncompressed size in the central directory (what zipfile trusts) to `declared`."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        n = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + n].decode() == name:
            struct.pack_into("<I", data, at + 24, declared)
            break
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def load_measuring(path):
    """reward_model.load(path): the error, and the peak of Python allocations while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as e:
            reward_model.load(path)
        return str(e.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_declared_bomb_is_refused_before_reading(tmp_path):
    msg, peak = load_measuring(bomb(tmp_path / "bomb.zip", export.MAX_TOTAL + (1 << 20)))
    assert "declares" in msg and "limit" in msg
    assert peak < 4 << 20  # nothing was decompressed (the member is 257 MiB)


def test_members_each_under_the_limit_but_too_big_together_are_refused(tmp_path):
    part = (export.MAX_TOTAL >> 20) * 3 // 4  # MiB: each member passes on its own
    path = bomb(tmp_path / "two.zip", part << 20)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as z, z.open("README.md", "w") as f:
        for _ in range(part):
            f.write(bytes(1 << 20))
    msg, peak = load_measuring(path)
    assert "uncompressed" in msg and peak < 4 << 20


def test_a_member_that_lies_about_its_size_is_cut_off(tmp_path):
    path = bomb(tmp_path / "liar.zip", 64 << 20)
    lie_about_size(path, "model.safetensors", 1000)
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("model.safetensors").file_size == 1000  # passes the declared-size checks
    msg, peak = load_measuring(path)
    assert "larger than it declares" in msg or "damaged" in msg
    assert peak < 8 << 20  # stopped near the declared size, not after 64 MiB


def test_too_many_entries_and_an_oversized_config_are_refused(tmp_path):
    msg, _ = load_measuring(bomb(tmp_path / "many.zip", 1 << 20, entries=[f"f{i}" for i in range(export.MAX_MEMBERS)]))
    assert "entries" in msg
    path = tmp_path / "config-bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", b" " * (export.MAX_BYTES["config.json"] + 1))
        z.writestr("model.safetensors", b"")
    msg, _ = load_measuring(path)
    assert "config.json" in msg and "declares" in msg
    # within every limit, the same kind of file fails later, for what is actually wrong with it
    msg, _ = load_measuring(bomb(tmp_path / "small.zip", 1 << 20))
    assert "declares" not in msg and "entries" not in msg


def test_damaged_zips_are_a_clear_error(tmp_path):
    path = bomb(tmp_path / "ok.zip", 1 << 20)
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # corrupt the compressed stream of model.safetensors
    path.write_bytes(bytes(data))
    msg, _ = load_measuring(path)
    assert "damaged" in msg or "larger than it declares" in msg
