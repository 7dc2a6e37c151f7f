"""Simulated raters with different tastes, and loading a rater from `file.py:function` or `module:function`.

A rater is any callable `prefer(image_a, image_b, prompt) -> "a" | "b" | "tie"`. The shipped tastes look
at pixels only (they never see the scene that was rendered), so they rate generated images as well as
renders; `follows_prompt` also reads the prompt, as a person would. Each is deterministic.

Like a person, a taste calls a pair a tie when the difference is too small to see: the margins below are
just-noticeable differences (about 8 RGB levels of mean warmth, 3% of the image in centred object area, 4
levels of background texture). Below them a preference is pixel noise that no model of the image can learn
(measured on toy-LCM samples: the median same-prompt difference in background texture is about one level).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

Rater = Callable[[Image.Image, Image.Image, str], str]
OBJECT_DIST = 60.0  # a pixel this far (RGB) from the border colour belongs to an object
BORDER = 2  # width of the border ring that shows the background


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3) in [0, 255]


def _border(arr: np.ndarray) -> np.ndarray:
    b = BORDER
    return np.concatenate([arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3),
                           arr[b:-b, :b].reshape(-1, 3), arr[b:-b, -b:].reshape(-1, 3)])


def _compare(score_a: float, score_b: float, margin: float) -> str:
    if abs(score_a - score_b) <= margin:
        return "tie"
    return "a" if score_a > score_b else "b"


# ---------------------------------------------------------------- tastes (scores from pixels)

def warmth(image: Image.Image) -> float:
    """Mean red minus mean blue, in [-1, 1]: reds, oranges and yellows are warm; blues and purples cold."""
    arr = _rgb(image)
    return float((arr[..., 0] - arr[..., 2]).mean() / 255.0)


def centred_size(image: Image.Image) -> float:
    """Fraction of pixels unlike the border colour, times how close their centroid is to the centre."""
    arr = _rgb(image)
    h, w, _ = arr.shape
    mask = np.linalg.norm(arr - _border(arr).mean(0), axis=-1) > OBJECT_DIST
    if not mask.any():
        return 0.0
    ys, xs = np.nonzero(mask)
    off = np.hypot(ys.mean() - (h - 1) / 2, xs.mean() - (w - 1) / 2) / np.hypot(h / 2, w / 2)
    return float(mask.mean() * (1.0 - off))


def plainness(image: Image.Image) -> float:
    """Minus the colour spread of the border ring (0 for a flat background; stripes and noise score lower)."""
    return -float(_border(_rgb(image)).std(0).mean() / 255.0)


def warm_colours(image_a: Image.Image, image_b: Image.Image, prompt: str) -> str:
    """Prefers the warmer image."""
    return _compare(warmth(image_a), warmth(image_b), margin=0.03)


def big_centred(image_a: Image.Image, image_b: Image.Image, prompt: str) -> str:
    """Prefers a bigger object nearer the centre."""
    return _compare(centred_size(image_a), centred_size(image_b), margin=0.03)


def plain_background(image_a: Image.Image, image_b: Image.Image, prompt: str) -> str:
    """Prefers the flatter background."""
    return _compare(plainness(image_a), plainness(image_b), margin=0.015)


def follows_prompt(image_a: Image.Image, image_b: Image.Image, prompt: str) -> str:
    """Prefers the image showing more of what the prompt asks for (the toy world's exact checker)."""
    from rlcm.toy.checker import check

    return _compare(check(image_a, prompt).score, check(image_b, prompt).score, margin=1e-9)


def noisy(rater: Rater, flip: float = 0.2, seed: int = 0) -> Rater:
    """`rater` with a fraction `flip` of its a/b answers reversed (ties kept), chosen by a hash of the inputs."""
    if not 0.0 <= flip <= 1.0:
        raise ValueError(f"flip must be in [0, 1], got {flip}")

    def prefer(image_a: Image.Image, image_b: Image.Image, prompt: str) -> str:
        answer = rater(image_a, image_b, prompt)
        h = hashlib.sha256(f"{seed}|{prompt}|".encode())
        for im in (image_a, image_b):
            h.update(im.convert("RGB").tobytes())
        if answer != "tie" and int.from_bytes(h.digest()[:8], "big") / 2**64 < flip:
            return "b" if answer == "a" else "a"
        return answer

    prefer.taste = rater  # what the noise hides: benchmarks also measure against it (a flip rate f caps the
    # noisy rater's win rate for even a perfect improvement at 1 - f)
    prefer.__name__ = f"noisy_{getattr(rater, '__name__', 'rater')}"
    prefer.__doc__ = f"{getattr(rater, '__name__', 'rater')} with {flip:.0%} of answers flipped."
    return prefer


RATERS: dict[str, Rater] = {  # the shipped simulated raters, by name
    "warm_colours": warm_colours,
    "big_centred": big_centred,
    "plain_background": plain_background,
    "follows_prompt": follows_prompt,
    "noisy_warm_colours": noisy(warm_colours, 0.2),
    "noisy_big_centred": noisy(big_centred, 0.2),
    "noisy_plain_background": noisy(plain_background, 0.2),
}


def load_rater(spec: str) -> Rater:
    """A shipped rater by name, or `path/to/file.py:function`, or `package.module:function`."""
    if spec in RATERS:
        return RATERS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown rater {spec!r}; valid: {', '.join(RATERS)}, 'file.py:function' or 'module:function'")
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"rater file {path} does not exist")
        mod_name = f"_rater_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"cannot import rater module {target!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{target} has no callable {name!r}")
    return fn
