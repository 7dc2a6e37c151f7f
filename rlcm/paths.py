"""The one home of the shipped data's location: `data/` in a checkout, or the copy `pip install .` puts in `rlcm/_data`."""

from __future__ import annotations

from pathlib import Path

TOY_MODELS = ("toy-lcm", "toy-teacher", "toy-clip")  # what data/models ships (see data/models/README.md)
_PACKAGED = Path(__file__).resolve().parent / "_data"  # pyproject.toml maps the checkout's data/ here
_CHECKOUT = Path(__file__).resolve().parent.parent / "data"


def data_dir() -> Path:
    """The installed package's data if it is there, else the checkout's `data/` (also an editable install's)."""
    return _PACKAGED if (_PACKAGED / "models").is_dir() else _CHECKOUT


def models_dir() -> Path:
    return data_dir() / "models"


def prompts_dir() -> Path:
    return data_dir() / "prompts"


def toy_model(name: str) -> Path:
    """The directory of a shipped toy model by name ("toy-lcm", "toy-teacher", "toy-clip")."""
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; valid: {', '.join(TOY_MODELS)}")
    return models_dir() / name


def toy_model_name(path: str | Path) -> str | None:
    """The shipped name of a directory that is one of the toy models (in any of its homes), else None."""
    try:
        p = Path(path).resolve()
    except OSError:
        return None
    for root in (_PACKAGED / "models", _CHECKOUT / "models"):
        if p.parent == root.resolve() and p.name in TOY_MODELS:
            return p.name
    return None
