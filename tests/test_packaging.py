"""`pip install .` ships what a checkout has: every package, the toy models and prompt sets, working console scripts."""

from __future__ import annotations

import fnmatch
import importlib
import tomllib
from pathlib import Path

import pytest

from rlcm import paths

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUP = CONFIG["tool"]["setuptools"]


def test_every_package_directory_is_installed():
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("**/__init__.py")
            if p.parent.relative_to(ROOT).parts[0] not in ("tests", "build") and ".git" not in p.parts}
    assert set(SETUP["packages"]) == tree | {"rlcm._data"}


def test_package_data_covers_the_shipped_models_and_prompts():
    data = ROOT / SETUP["package-dir"]["rlcm._data"]
    shipped = {p.relative_to(data).as_posix() for d in ("models", "prompts") for p in (data / d).rglob("*")
               if p.is_file()}
    patterns = CONFIG["tool"]["setuptools"]["package-data"]["rlcm._data"]
    # setuptools globs like pathlib: '*' stays within one directory level
    covered = {f for f in shipped if any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in patterns)}
    assert shipped and covered == shipped, sorted(shipped - covered)
    for name in paths.TOY_MODELS:
        assert any(f.startswith(f"models/{name}/") for f in shipped)


@pytest.mark.parametrize("script", sorted(CONFIG["project"]["scripts"]))
def test_console_scripts_point_at_main_functions(script):
    module, func = CONFIG["project"]["scripts"][script].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_paths_find_the_toy_models_by_name():
    assert paths.toy_model("toy-clip") == ROOT / "data" / "models" / "toy-clip"
    assert paths.toy_model_name(ROOT / "data" / "models" / "toy-lcm") == "toy-lcm"
    assert paths.toy_model_name(ROOT / "data") is None
    assert (paths.prompts_dir() / "simple_animals.txt").is_file()
    with pytest.raises(ValueError, match="valid: toy-lcm, toy-teacher, toy-clip"):
        paths.toy_model("toy-gan")
