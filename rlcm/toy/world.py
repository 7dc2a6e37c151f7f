"""The toy world: procedural captioned 64x64 scenes, a caption grammar and its parser.

A scene is one or two objects (shape, colour, size, position) on a background (colour, style).
Everything is deterministic from a seed. Backgrounds vary by style (plain, gradient, striped,
noisy) with small zero-mean modulations around the named colour, so JPEG size varies a lot
while the colour stays exactly checkable (see `checker.py`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # image side in pixels
SUPERSAMPLE = 4  # shapes are drawn 4x larger and downsampled for smooth edges

# Conventional (CSS) RGB values, chosen to be far apart in RGB.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "orange": (255, 165, 0),
    "yellow": (255, 255, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "purple": (128, 0, 128),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": (14, 19), "large": (28, 40)}  # bounding-box side range in pixels
SIZE_THRESHOLD = 23  # bbox side separating small from large in the checker
STYLES = ("plain", "gradient", "striped", "noisy")
MODULATION = 25  # amplitude of gradient/stripe modulation (per channel)
NOISE_STD = 12  # std of the noisy background (per channel)
MARGIN = 3  # objects stay this far from the border, so the border ring is pure background


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str  # "small" | "large"
    side: int  # bounding-box side in pixels
    cx: float
    cy: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    bg_color: str
    bg_style: str
    seed: int


@dataclass(frozen=True)
class Request:
    """What a prompt asks for; None means the prompt leaves that attribute out."""

    objects: tuple[dict, ...] = field(default_factory=tuple)  # keys: shape, color, size
    bg_color: str | None = None
    bg_style: str | None = None


# ---------------------------------------------------------------- held-out split


def combo_key(color: str, shape: str, bg: str) -> str:
    return f"{color} {shape} on {bg}"


def is_held_out(color: str | None, shape: str | None, bg: str | None) -> bool:
    """About 15% of (object colour, shape, background colour) triples never appear in training."""
    if color is None or shape is None or bg is None:
        return False
    h = hashlib.sha256(combo_key(color, shape, bg).encode()).digest()[0]
    return h < 39  # 39/256 ~ 15%


# ---------------------------------------------------------------- sampling scenes


def _place(rng: random.Random, side: int, taken: list[tuple[float, float, int]]) -> tuple[float, float] | None:
    lo, hi = MARGIN + side / 2, SIZE - MARGIN - side / 2
    for _ in range(50):
        cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if all(abs(cx - x) > (side + s) / 2 + 2 or abs(cy - y) > (side + s) / 2 + 2 for x, y, s in taken):
            return cx, cy
    return None


def sample_scene(seed: int, split: str = "train", two_object_prob: float = 0.15) -> Scene:
    """A random scene; `split` picks triples from the training or the held-out combinations."""
    rng = random.Random(seed)
    colors, shapes = list(COLORS), list(SHAPES)
    while True:
        bg = rng.choice(colors)
        n = 2 if rng.random() < two_object_prob else 1
        objs: list[Obj] = []
        taken: list[tuple[float, float, int]] = []
        used_colors = {bg}
        ok = True
        for i in range(n):
            color = rng.choice([c for c in colors if c not in used_colors])
            shape = rng.choice(shapes)
            held = is_held_out(color, shape, bg)
            if (split == "train" and held) or (split == "heldout" and i == 0 and not held):
                ok = False
                break
            size = "small" if n == 2 else rng.choice(list(SIZES))
            side = rng.randint(*SIZES[size])
            pos = _place(rng, side, taken)
            if pos is None:
                ok = False
                break
            taken.append((pos[0], pos[1], side))
            used_colors.add(color)
            objs.append(Obj(shape, color, size, side, pos[0], pos[1]))
        if ok:
            return Scene(tuple(objs), bg, rng.choice(STYLES), seed)


# ---------------------------------------------------------------- rendering


def shape_polygon(shape: str, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]] | None:
    """Polygon filling the box (x0, y0)-(x1, y1) exactly; None for the circle (an ellipse)."""
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(x0 + w / 2, y0), (x1, y1), (x0, y1)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = np.pi / 2 + k * np.pi / 5
            pts.append((r * np.cos(a), -r * np.sin(a)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        mx, Mx, my, My = min(xs), max(xs), min(ys), max(ys)
        return [(x0 + (px - mx) / (Mx - mx) * w, y0 + (py - my) / (My - my) * h) for px, py in pts]
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


def shape_mask(shape: str, x0: float, y0: float, x1: float, y1: float, size: int = SIZE) -> np.ndarray:
    """Soft mask in [0, 1] of a shape filling a box, anti-aliased by supersampling."""
    s = SUPERSAMPLE
    img = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(img)
    box = (x0 * s, y0 * s, x1 * s - 1, y1 * s - 1)
    poly = shape_polygon(shape, *box)
    if poly is None:
        draw.ellipse(box, fill=255)
    else:
        draw.polygon(poly, fill=255)
    img = img.resize((size, size), Image.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def _background(color: str, style: str, rng: np.random.Generator) -> np.ndarray:
    c = np.array(COLORS[color], dtype=np.float32)
    img = np.broadcast_to(c, (SIZE, SIZE, 3)).copy()
    if style == "gradient":
        t = np.linspace(-1, 1, SIZE, dtype=np.float32)
        ramp = t[:, None] if rng.random() < 0.5 else t[None, :]
        img += MODULATION * np.broadcast_to(ramp, (SIZE, SIZE))[..., None]
    elif style == "striped":
        period = int(rng.integers(4, 9))
        idx = np.arange(SIZE)
        band = np.where((idx // (period // 2 or 1)) % 2 == 0, 1.0, -1.0).astype(np.float32)
        band2d = band[:, None] if rng.random() < 0.5 else band[None, :]
        img += MODULATION * np.broadcast_to(band2d, (SIZE, SIZE))[..., None]
    elif style == "noisy":
        img += rng.normal(0, NOISE_STD, (SIZE, SIZE, 3)).astype(np.float32)
    elif style != "plain":
        raise ValueError(f"unknown background style {style!r}; valid: {STYLES}")
    return img


def render(scene: Scene) -> Image.Image:
    """Deterministic RGB rendering of a scene."""
    rng = np.random.default_rng(scene.seed)
    img = _background(scene.bg_color, scene.bg_style, rng)
    for o in scene.objects:
        half = o.side / 2
        m = shape_mask(o.shape, o.cx - half, o.cy - half, o.cx + half, o.cy + half)[..., None]
        img = img * (1 - m) + np.array(COLORS[o.color], dtype=np.float32) * m
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")


# ---------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(o: dict) -> str:
    words = [w for w in (o.get("size"), o.get("color"), o["shape"]) if w]
    return f"{_article(words[0])} {' '.join(words)}"


def caption_of(req: Request) -> str:
    text = " and ".join(object_phrase(o) for o in req.objects)
    if req.bg_color:
        words = [w for w in (req.bg_style, req.bg_color) if w]
        text += f" on {_article(words[0])} {' '.join(words)} background"
    return text


def full_request(scene: Scene) -> Request:
    objs = tuple({"shape": o.shape, "color": o.color, "size": o.size} for o in scene.objects)
    return Request(objs, scene.bg_color, scene.bg_style)


def caption(scene: Scene, drop: bool = True) -> str:
    """A caption for a scene; with `drop`, some attributes are left out (people type short prompts)."""
    rng = random.Random(scene.seed * 7919 + 1)
    if not drop:
        return caption_of(full_request(scene))
    objs = []
    for o in scene.objects:
        objs.append({
            "shape": o.shape,
            "color": o.color if rng.random() > 0.05 else None,
            "size": o.size if rng.random() > 0.4 else None,
        })
    has_bg = rng.random() > 0.08
    style = scene.bg_style if rng.random() > 0.4 else None
    return caption_of(Request(tuple(objs), scene.bg_color if has_bg else None, style if has_bg else None))


def parse(prompt: str) -> Request:
    """Parse a caption of the grammar back into the attributes it requests.

    Raises ValueError on a prompt outside the grammar.
    """
    words = prompt.lower().replace(",", " ").split()
    if not words:
        raise ValueError("empty prompt")
    bg_color = bg_style = None
    if "on" in words:
        i = words.index("on")
        obj_words, bg_words = words[:i], words[i + 1:]
        if not bg_words or bg_words[-1] != "background":
            raise ValueError(f"expected '... background' after 'on' in {prompt!r}")
        for w in bg_words[:-1]:
            if w in COLORS:
                bg_color = w
            elif w in STYLES:
                bg_style = w
            elif w not in ("a", "an"):
                raise ValueError(f"unknown word {w!r} in {prompt!r}")
    else:
        obj_words = words
    objects = []
    for chunk in " ".join(obj_words).split(" and "):
        o: dict = {"shape": None, "color": None, "size": None}
        for w in chunk.split():
            if w in SHAPES:
                o["shape"] = w
            elif w in COLORS:
                o["color"] = w
            elif w in SIZES:
                o["size"] = w
            elif w not in ("a", "an"):
                raise ValueError(f"unknown word {w!r} in {prompt!r}")
        if o["shape"] is None:
            raise ValueError(f"no shape in {chunk!r}; valid shapes: {SHAPES}")
        objects.append(o)
    return Request(tuple(objects), bg_color, bg_style)


def vocabulary() -> list[str]:
    """Every word the grammar can produce (the toy text encoder's word-level vocabulary)."""
    return sorted({"a", "an", "and", "on", "background", *COLORS, *SHAPES, *SIZES, *STYLES})


def prompts(split: str, n: int, seed: int = 0, drop: bool = True) -> list[str]:
    """`n` distinct captions of scenes from the training or the held-out combinations."""
    out: list[str] = []
    seen: set[str] = set()
    s = seed * 1_000_003
    while len(out) < n:
        sc = sample_scene(s, split, two_object_prob=0.0 if split == "heldout" else 0.15)
        c = caption(sc, drop=drop)
        s += 1
        req = parse(c)
        if split == "heldout" and not is_held_out(req.objects[0]["color"], req.objects[0]["shape"], req.bg_color):
            continue  # a caption that leaves attributes out is no longer a held-out combination
        if c not in seen:
            seen.add(c)
            out.append(c)
        if s - seed * 1_000_003 > 100 * n + 10_000:
            break
    return out
