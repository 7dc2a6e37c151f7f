"""Rewards by name: each factory returns `fn(images, prompts) -> np.ndarray (N,)` (float32, higher is better).

Heavy dependencies load inside the factory, once. `AsyncReward` computes a batch's reward in a worker
thread while the next batch is sampled.
"""

from __future__ import annotations

import io
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

RewardFn = Callable[[list, list[str]], np.ndarray]

DEFAULT_TOY_CLIP = "toy-clip"  # the shipped toy CLIP by name (load_clip finds it)


def _jpeg_kb(image) -> float:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.tell() / 1000


def jpeg_compressibility(**_) -> RewardFn:
    """Negative JPEG size (quality 95) in kB: smaller files are better (the paper's compressibility task)."""
    return lambda images, prompts: -np.array([_jpeg_kb(im) for im in images], np.float32)


def jpeg_incompressibility(**_) -> RewardFn:
    """JPEG size (quality 95) in kB: bigger files are better."""
    return lambda images, prompts: np.array([_jpeg_kb(im) for im in images], np.float32)


def toy_fidelity(**_) -> RewardFn:
    """Fraction of the prompt's attributes the toy checker finds (toy world only)."""
    from .toy.checker import check

    return lambda images, prompts: np.array([check(im, p).score for im, p in zip(images, prompts)], np.float32)


def clip_alignment(clip: str = DEFAULT_TOY_CLIP, device: str = "cpu", pretrained: str | None = None,
                   **_) -> RewardFn:
    """Prompt-image CLIP cosine similarity (x100, as CLIPScore); the toy CLIP offline."""
    from .clip import load_clip

    return _clip_score(load_clip(clip, device=device, pretrained=pretrained))


def _clip_score(model) -> RewardFn:
    return lambda images, prompts: (100 * model.score(images, list(prompts))).cpu().numpy().astype(np.float32)


# Words a prompt asks for that a swap turns into another request: each occurrence in a prompt is swapped for the
# rest of its group. English attributes, so real prompts have them too; the toy world's sizes, colours and shapes
# are among them.
SWAP_GROUPS: tuple[tuple[str, ...], ...] = (
    ("small", "large"),
    ("red", "orange", "yellow", "green", "blue", "purple", "white", "black"),
    ("circle", "square", "triangle", "star"),
)


def prompt_variants(prompt: str, groups=SWAP_GROUPS) -> list[list[str]]:
    """For each attribute word in `prompt`, the prompt with that word swapped for each other word of its group,
    its article fixed ("an orange star" -> "a red star") and trailing punctuation kept; one list per occurrence."""
    words = prompt.split(" ")
    out = []
    for i, word in enumerate(words):
        core = word.rstrip(".,;:!?")
        group = next((g for g in groups if core.lower() in g), None)
        if group is None:
            continue
        variants = []
        for other in group:
            if other == core.lower():
                continue
            new = words[:i] + [other + word[len(core):]] + words[i + 1:]
            if i and new[i - 1].lower() in ("a", "an"):  # the article before the swapped word
                new[i - 1] = new[i - 1][0] + ("n" if other[0] in "aeiou" else "")
            variants.append(" ".join(new))
        out.append(variants)
    return out


def swap_hinge(model) -> RewardFn:
    """Per image, x100: the sum over its prompt's attribute words (`prompt_variants`) of min(0, CLIP score with
    the prompt - best score with that word swapped). Zero for an image that fits its prompt better than every
    one-word change of it; negative by how far a change fits better. A plain CLIP score rewards what the prompt
    leaves open too, so a taste for bigger objects outbids it on "small" prompts (toy CLIP, rendered objects on
    "small" prompts: 0 up to 20 px, -7 at 24, -23 at 40; the plain score falls only from 80 to 58)."""
    cache: dict[str, tuple] = {}

    def texts_of(prompt: str):
        if prompt not in cache:
            groups = prompt_variants(prompt)
            cache[prompt] = (model.embed_texts([prompt] + [v for g in groups for v in g]), [len(g) for g in groups])
        return cache[prompt]

    def score(images, prompts):
        emb = model.embed_images(images)
        out = np.zeros(len(prompts), np.float32)
        for k, p in enumerate(prompts):
            texts, sizes = texts_of(p)
            s = (texts @ emb[k]).cpu().numpy().astype(np.float64)
            bounds = np.cumsum([1] + sizes)
            out[k] = 100 * sum(min(0.0, s[0] - s[lo:hi].max()) for lo, hi in zip(bounds[:-1], bounds[1:]))
        return out

    return score


def weighted_sum(terms: list[tuple[float, RewardFn]]) -> RewardFn:
    """sum_i w_i * fn_i(images, prompts), accumulated in float64."""
    return lambda images, prompts: sum(w * np.asarray(fn(images, prompts), np.float64)
                                       for w, fn in terms).astype(np.float32)


def with_alignment_guard(fn: RewardFn, clip, weight: float, pairs: list | None = None,
                         swap_weight: float = 0.0) -> RewardFn:
    """`fn` plus w x the prompt-image CLIP score (x100) of `clip` (a loaded `Clip`, a directory or an open_clip
    name): keeps a learned reward from buying its gains with what the prompt asked for.

    Without `pairs`, w = `weight`. With `pairs` [(image_a, image_b, prompt)] of one prompt each, `weight` is
    relative: w makes the guard's mean |difference| over those pairs `weight` x `fn`'s (`relative_weight`).
    `swap_weight` (absolute) adds the `swap_hinge` term: zero unless a one-word change of the prompt fits better.
    """
    if not weight and not swap_weight:
        return fn
    if not hasattr(clip, "score"):
        from .clip import load_clip

        clip = load_clip(clip)
    guard = _clip_score(clip)
    w = relative_weight(fn, guard, weight, pairs) if pairs and weight else weight
    out = weighted_sum([(1.0, fn), (w, guard)] + ([(swap_weight, swap_hinge(clip))] if swap_weight else []))
    out.guard_weight, out.swap_weight = w, swap_weight
    return out


def relative_weight(fn: RewardFn, guard: RewardFn, weight: float, pairs: list) -> float:
    """The weight on `guard` that makes its within-pair differences `weight` x those of `fn` (mean |r_a - r_b|).

    Why relative: advantages are normalised per prompt, so only differences between images of one prompt
    steer a round, and only their ratio between two terms matters. A reward model fitted on 30 labels has a
    small spread (0.63 per prompt on the toy against the CLIP score's 1.30 at weight 0.2), and an absolute
    weight let the guard outvote it: the round learned the CLIP score, not the taste (bench/RESULTS.md).
    """
    images = [im for a, b, _ in pairs for im in (a, b)]
    prompts = [p for _, _, p in pairs for _ in (0, 1)]
    spread = lambda r: float(np.abs(np.asarray(r, np.float64).reshape(-1, 2) @ [1.0, -1.0]).mean())  # noqa: E731
    g = spread(guard(images, prompts))
    return float(weight * spread(fn(images, prompts)) / g) if g > 0 else 0.0


class AestheticMLP:
    """The LAION aesthetic predictor v2 head: a chain of linear layers (dropout only, no activations)
    on the L2-normalised CLIP image embedding; keys `<index>.weight` / `<index>.bias`."""

    def __init__(self, state: dict, device: str = "cpu"):
        keys = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda k: int(k.rsplit(".", 1)[-1]))
        self.layers = [(state[f"{k}.weight"].to(device), state[f"{k}.bias"].to(device)) for k in keys]
        self.in_dim = self.layers[0][0].shape[1]

    def __call__(self, emb):
        for w, b in self.layers:
            emb = emb @ w.T + b
        return emb.squeeze(-1)


def _load_state(weights: str) -> dict:
    """Aesthetic head weights from a local .safetensors/.pth, or `repo_id/filename` from the Hub cache."""
    import torch

    path = Path(weights)
    if not path.exists():
        from huggingface_hub import hf_hub_download

        repo, _, filename = weights.rpartition("/")
        if not repo:
            raise FileNotFoundError(f"aesthetic weights {weights!r}: no such file, and not 'repo_id/filename'")
        try:
            path = Path(hf_hub_download(repo, filename))
        except Exception as e:  # offline, or not cached
            raise RuntimeError(
                f"aesthetic weights {weights!r} are not available offline ({type(e).__name__}). Download the LAION "
                "aesthetic predictor (e.g. 'sac+logos+ava1-l14-linearMSE.pth') once and pass its local path."
            ) from e
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code execution
    return {k.removeprefix("layers."): v.float() for k, v in state.items()}


def aesthetic(weights: str = "", clip: str = "ViT-L-14", pretrained: str | None = "openai", device: str = "cpu",
              **_) -> RewardFn:
    """LAION aesthetic score: CLIP image embedding (ViT-L/14 by default) + the predictor's MLP head."""
    import torch

    if not weights:
        raise ValueError("the aesthetic reward needs `weights`: a local file or 'repo_id/filename' of the "
                         "LAION aesthetic predictor head")
    from .clip import load_clip

    head = AestheticMLP(_load_state(weights), device)
    try:
        model = load_clip(clip, device=device, pretrained=pretrained)
    except Exception as e:
        raise RuntimeError(f"CLIP {clip!r} ({pretrained}) for the aesthetic reward is not available offline: {e}") from e

    def fn(images, prompts):
        with torch.no_grad():
            emb = model.embed_images(images)
            if emb.shape[1] != head.in_dim:
                raise ValueError(f"aesthetic head expects {head.in_dim}-d embeddings, CLIP gives {emb.shape[1]}")
            return head(emb).cpu().numpy().astype(np.float32)

    return fn


def preference(model: RewardFn | None = None, **_) -> RewardFn:
    """A learned reward, passed in loaded: `model` is `fn(images, prompts)`, e.g. `reward_model.load(path)
    .as_reward_fn()` (`python -m rlcm train --reward-kwargs '{"model": PATH}'` loads it so). `rlcm` sits below
    `reward_model` and never imports it."""
    if model is None or model == "":
        raise ValueError("the preference reward needs `model`: a loaded reward function, e.g. "
                         "reward_model.load(path).as_reward_fn()")
    if not callable(model):
        raise ValueError(f"the preference reward takes a loaded reward function, not {model!r}: pass "
                         "reward_model.load(path).as_reward_fn() (the `python -m rlcm train` CLI loads a path)")
    return model


REWARDS: dict[str, Callable[..., RewardFn]] = {
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
    "aesthetic": aesthetic,
    "clip_alignment": clip_alignment,
    "toy_fidelity": toy_fidelity,
    "preference": preference,
}


def parse_reward(spec: str) -> list[tuple[float, str]]:
    """`"jpeg_compressibility+0.05*clip_alignment"` -> [(1.0, "jpeg_compressibility"), (0.05, "clip_alignment")]."""
    terms = []
    for part in spec.replace(" ", "").split("+"):
        weight, _, name = part.rpartition("*")
        if name not in REWARDS:
            raise ValueError(f"unknown reward {name!r} in {spec!r}; valid: {sorted(REWARDS)}, "
                             "or a weighted sum such as 'jpeg_compressibility+0.05*clip_alignment'")
        try:
            terms.append((float(weight) if weight else 1.0, name))
        except ValueError:
            raise ValueError(f"bad weight {weight!r} in reward {spec!r}: expected a number before '*'") from None
    return terms


def get_reward(spec: str, **kwargs) -> RewardFn:
    """A reward by name, or a weighted sum of named rewards (e.g. a task reward plus a prompt-alignment guard);
    `kwargs` go to every term's factory (each takes what it knows)."""
    terms = parse_reward(spec)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return REWARDS[terms[0][1]](**kwargs)
    return weighted_sum([(w, REWARDS[name](**kwargs)) for w, name in terms])


class AsyncReward:
    """Runs a reward function in one worker thread so sampling the next batch overlaps it."""

    def __init__(self, fn: RewardFn):
        self.fn = fn
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")

    def submit(self, images, prompts) -> Future:
        return self.pool.submit(self.fn, images, prompts)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
