"""Shared fixtures: offline, deterministic, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "data" / "models"
# one torch thread per xdist worker (pytest.ini runs two on CI's two cores), both threads when run alone
torch.set_num_threads(int(os.environ.get("RLCM_TEST_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")))


def pytest_collection_modifyitems(config, items):
    """Files marked `heavy` first, in their collected order (stable sort): xdist hands out files in this order."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def shipped(name: str) -> Path:
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"{path} not built yet (python -m rlcm.toy.build)")
    return path


@pytest.fixture(scope="session")
def toy_lcm_path() -> Path:
    return shipped("toy-lcm")


@pytest.fixture(scope="session")
def toy_teacher_path() -> Path:
    return shipped("toy-teacher")


@pytest.fixture(scope="session")
def toy_clip_path() -> Path:
    return shipped("toy-clip")


TOY_CLIP = MODELS / "toy-clip"


def toy_clip_present() -> bool:
    return (TOY_CLIP / "open_clip_model.safetensors").is_file() and any(TOY_CLIP.glob("*.json"))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """`data/models/toy-clip` when built, otherwise a random-weight CLIP of the same architecture."""
    if toy_clip_present():
        return TOY_CLIP
    from rlcm.toy.models import random_clip

    return random_clip(tmp_path_factory.mktemp("random-toy-clip"))


@pytest.fixture(scope="session")
def clip(clip_dir):
    from rlcm.clip import load_clip

    return load_clip(clip_dir)


@pytest.fixture
def tiny_lcm():
    """A random-weight LCM of the SD-1.5 / Dreamshaper layout."""
    from rlcm.arch import lcm_pipeline

    pipe = lcm_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- trainer tests (imported: `from .conftest import ...`)


def brightness(images, prompts) -> np.ndarray:
    """The trainer tests' reward: mean pixel value in [0, 1], cheap and easy for a policy to move."""
    return np.array([np.asarray(im, np.float32).mean() / 255 for im in images], np.float32)


# what every trainer test shares: the tiny random LCM, 2 steps (1 action), no evals, a checkpoint every epoch
TRAINER_TEST_DEFAULTS = dict(model="tiny", num_steps=2, eval_every=0, lr=1e-2, clip_range=1.0, checkpoint_every=1)


def rlcm_config(tmp_path: Path, sizes: dict, **kw):
    """An RLCMConfig writing under tmp_path/run: the shared defaults, then a test file's `sizes`, then `kw`."""
    from rlcm.trainer import RLCMConfig

    return RLCMConfig(**{**TRAINER_TEST_DEFAULTS, "output_dir": str(tmp_path / "run"), **sizes, **kw})
