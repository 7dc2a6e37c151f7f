"""bench/RESULTS.md: replace or append one `## title` section, stamped with date, machine and command line."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# Benchmark results\n\nEach section is written by the script named in its command line (see bench/); "
          "its stamp names the shipped toy generators it measured (sha256 prefix of each UNet file).\n")


def machine() -> str:
    """CPU model and cores (and the GPU, if torch sees one), e.g. `AMD EPYC 7B13, 2 cores; no GPU`."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores; {gpu}"


def toy_models() -> str:
    """Which shipped toy generators a figure is of: the first 8 hex digits of each UNet file's sha256."""
    import hashlib

    root = Path(__file__).resolve().parent.parent / "data" / "models"
    tags = []
    for name in ("toy-lcm", "toy-teacher"):
        f = root / name / "unet" / "diffusion_pytorch_model.safetensors"
        if f.exists():
            tags.append(f"{name} {hashlib.sha256(f.read_bytes()).hexdigest()[:8]}")
    return ", ".join(tags) or "no toy models"


def command_line() -> str:
    """The command as typed, with the thread-count variable if it was set."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return f"{env} {cmd}".strip()


def results_path(quick: bool) -> Path:
    """bench/RESULTS.md for real runs; a throw-away file for --quick runs (they must not pollute it)."""
    return Path(tempfile.mkdtemp(prefix="bench-quick-")) / "RESULTS.md" if quick else RESULTS


def update_section(title: str, markdown: str, path: str | Path = RESULTS) -> Path:
    """Write `## title` with a stamp line and `markdown` into `path`, replacing a section of that title."""
    path = Path(path)
    stamp = f"_{time.strftime('%Y-%m-%d %H:%M %Z')} · {machine()} · {toy_models()} · `{command_line()}`_"
    section = f"## {title}\n\n{stamp}\n\n{markdown.strip()}\n"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
