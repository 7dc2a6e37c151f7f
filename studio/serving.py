"""The served generator and its queue of pre-generated pairs.

One pipeline serves every rater; one lock covers generation and LoRA swaps, so a swap never lands
mid-generation (diffusers' hot swap replaces tensors one by one, and the scheduler keeps per-call state).
"""

from __future__ import annotations

import collections
import queue
import random
import threading
import time
from pathlib import Path

import numpy as np
import torch

from rlcm.pipelines import LOAD_LOCK, load_pipeline

from .settings import StudioSettings

BASE = "base"


class ServedGenerator:
    """Lazily loaded pipeline with the served version ("base" or "round-N") and at most one pending candidate.

    Both LoRAs live in the one pipeline as peft adapters ("live" and "candidate"); `generate` picks the
    adapter under the lock, so an A/B pair costs no second copy of the model.
    """

    ADAPTERS = {"served": "live", "candidate": "candidate"}

    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self.lock = threading.RLock()
        self._pipe = None
        self.version = BASE  # served to everyone
        self.candidate: str | None = None  # on trial in A/B pairs
        self.checking: str | None = None  # in the candidate adapter for the automatic checks, not yet on trial
        self._loaded: set[str] = set()  # adapter names in the pipeline
        self._using: str | None = None  # adapter the pipeline applies now (None: base weights)

    @property
    def pipe(self):
        with self.lock:
            if self._pipe is None:
                self._pipe = load_pipeline(self.settings.model, self.settings.lcm_lora, self.settings.device)
            return self._pipe

    def _use(self, adapter: str | None) -> None:
        if adapter == self._using:
            return
        if adapter is None:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters(adapter)
        self._using = adapter

    def generate(self, prompts: list[str], seeds: list[int], version: str | None = None) -> tuple[list, str]:
        """Images for prompts with per-image seeds from `version` (default: the served one), and that version."""
        with self.lock:
            version = version or self.version
            if version == BASE:
                adapter = None
            elif version == self.version:
                adapter = self.ADAPTERS["served"]
            elif version in (self.candidate, self.checking):
                adapter = self.ADAPTERS["candidate"]
            else:
                raise ValueError(f"version {version!r} is neither served ({self.version}) nor the candidate")
            pipe = self.pipe
            self._use(adapter)
            gens = [torch.Generator(pipe.device).manual_seed(s) for s in seeds]
            images = pipe(prompts, num_inference_steps=self.settings.steps, guidance_scale=self.settings.guidance,
                          generator=gens).images
            return images, version

    def _load(self, adapter: str, lora_dir: str | Path) -> None:
        pipe = self.pipe
        if adapter in self._loaded:
            pipe.load_lora_weights(str(lora_dir), adapter_name=adapter, hotswap=True)
        else:
            pipe.load_lora_weights(str(lora_dir), adapter_name=adapter, low_cpu_mem_usage=False)
            self._loaded.add(adapter)
        self._using = "?"  # loading changes which adapters are active: select again before generating

    def activate(self, version: str, lora_dir: str | Path | None) -> None:
        """Serve `lora_dir` (or the base model when None) from the next generation on."""
        with self.lock, LOAD_LOCK:
            if lora_dir is not None:
                self._load(self.ADAPTERS["served"], lora_dir)
            self.version = version
            if self.candidate == version:
                self.candidate = None

    def save_adapter(self, role: str, path: Path) -> Path:
        """Write the peft-format weights of the "served" or "candidate" adapter (what `RLCMConfig.init_lora` reads)."""
        from rlcm.lora import save_lora_state

        with self.lock:
            return save_lora_state(self.pipe.unet, path, adapter_name=self.ADAPTERS[role])

    def set_candidate(self, version: str | None, lora_dir: str | Path | None = None, trial: bool = True) -> None:
        """Put `version` on trial (its LoRA in the second adapter), or end the trial with None. With `trial`
        False it is only loaded for the automatic checks: `generate` renders it, but no A/B pair shows it and
        no vote can promote it until `open_trial`."""
        with self.lock, LOAD_LOCK:
            self.candidate = self.checking = None
            if version is not None:
                self._load(self.ADAPTERS["candidate"], lora_dir)
            if trial:
                self.candidate = version
            else:
                self.checking = version

    def open_trial(self, version: str) -> None:
        """The version loaded for its checks passed them: on trial from now on."""
        with self.lock:
            if self.checking != version:
                raise ValueError(f"{version} is not the version being checked ({self.checking})")
            self.candidate, self.checking = version, None


def most_distinct_pair(images: list) -> tuple[int, int]:
    """Indices of the two images farthest apart in the perceptual statistics (each standardised over these
    images), blind to which is better. Before any reward model, a random pair of seeds is a tie for most
    raters (65-70% in the live loop); the most distinct of 4 seeds' 6 pairs halves that (bench/RESULTS.md,
    "Pair selection before the first reward model")."""
    from reward_model.perceptual import perceptual_features

    f = perceptual_features(images)
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    ii, jj = torch.triu_indices(len(images), len(images), offset=1)
    k = int((f[ii] - f[jj]).norm(dim=1).argmax())
    return int(ii[k]), int(jj[k])


def most_uncertain_pair(rm, images: list, prompt: str) -> tuple[int, int]:
    """Indices of the two images whose comparison the reward model is least sure about
    (`RewardModel.pair_uncertainty_of`, the score the store's pair selection uses too)."""
    import torch

    r = rm.head_scores_for(images, [prompt] * len(images))  # (K, N)
    ii, jj = torch.triu_indices(len(images), len(images), offset=1)
    k = int(rm.pair_uncertainty_of(r[:, ii], r[:, jj]).argmax())
    return int(ii[k]), int(jj[k])


class PairQueue:
    """A background thread keeps `size` fresh pairs ready, so the next pair appears at once after a vote."""

    def __init__(self, store, generator: ServedGenerator, prompts: list[str], size: int,
                 earlier_fraction: float = 0.25, seed: int = 0, reward_model=None, candidates: int = 4,
                 ab_fraction: float = 0.5, ab_draws: int = 4, keep_unrated: int | None = None,
                 trial_needs_votes=None):
        self.store, self.gen, self.prompts = store, generator, prompts
        # `candidates` seeds are drawn per pair; `reward_model()` gives the current RewardModel or None: with
        # one, the pair it is least sure about is shown (P(a over b) near 0.5, or heads disagreeing), before
        # it the two most distinct images. A/B pairs
        # draw `ab_draws` prompts and seeds, and show the one where the two versions differ most
        self.reward_model = reward_model or (lambda: None)
        self.candidates = max(2, candidates)
        self.ab_draws = max(1, ab_draws)
        self.q: queue.Queue = queue.Queue(maxsize=size)
        self.earlier_fraction = earlier_fraction
        self.ab_fraction = ab_fraction  # share of pairs that pit a pending candidate against the served version
        # `trial_needs_votes()`: False while more A/B votes can't change the trial's outcome (the studio: people
        # already prefer the candidate, which waits for its fidelity confirmation); ordinary pairs meanwhile
        self.trial_needs_votes = trial_needs_votes or (lambda: True)
        # disk stays bounded under anonymous traffic: unrated samples beyond this are deleted, oldest first,
        # except those queued or shown recently (someone may still vote on them)
        self.keep_unrated = keep_unrated
        self.shown: collections.deque[str] = collections.deque(maxlen=512)
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pair-queue", daemon=True)
            self._thread.start()

    def stop(self, wait: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=wait)

    def wait_full(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait up to `timeout` s (or until `stop` is set) for the worker to fill the queue; True when full.
        Returns at once when no worker runs."""
        deadline = time.time() + timeout
        while not self.q.full() and self._thread is not None and self._thread.is_alive() and time.time() < deadline:
            if (stop is not None and stop.is_set()) or self._stop.wait(0.2):
                break
        return self.q.full()

    def flush(self) -> None:
        """Drop queued pairs (after a model swap they show the old generator)."""
        while True:
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        self._wake.set()

    def make_pair(self, quick: bool = False) -> dict:
        """Generate one pair now: two seeds of one prompt, sometimes against an earlier generator's sample,
        or, while a candidate is on trial, sometimes an A/B pair (see `make_ab_pair`). `quick` (the queue ran
        dry and someone waits for this pair): two images only, so no choice among `candidates` seeds or
        `ab_draws` draws (an A/B pair still comes at its share: its votes are what the gate waits for)."""
        if self.gen.candidate is not None and self.trial_needs_votes() and self.rng.random() < self.ab_fraction:
            pair = self.make_ab_pair(draws=1 if quick else None)
            if pair is not None:
                return pair
        prompt = self.rng.choice(self.prompts)
        rm = self.reward_model()
        n = 2 if quick else self.candidates
        seeds = [self.rng.randrange(2**31) for _ in range(n)]
        images, version = self.gen.generate([prompt] * n, seeds)
        if n > 2:
            i, j = most_uncertain_pair(rm, images, prompt) if rm is not None else most_distinct_pair(images)
            images, seeds = [images[i], images[j]], [seeds[i], seeds[j]]
        steps, guidance = self.gen.settings.steps, self.gen.settings.guidance
        ids = [self.store.add_sample(im, prompt, s, steps, guidance, generator=version)
               for im, s in zip(images, seeds)]
        if self.rng.random() < self.earlier_fraction:
            # never the candidate's samples: its votes against the served version are the gate's A/B trial,
            # which must show both on one prompt and seed
            older = [s for s in self.store.samples() if s["prompt"] == prompt
                     and s["generator"] not in (version, self.gen.candidate)]
            if older:
                ids[1] = self.rng.choice(older)["id"]
        if self.rng.random() < 0.5:
            ids.reverse()  # left/right carries no information
        return {"prompt": prompt, "a": ids[0], "b": ids[1], "version": version}

    def make_ab_pair(self, draws: int | None = None) -> dict | None:
        """The candidate against the served version for one prompt and one seed, sides at random: of
        `draws` (default `ab_draws`) prompt-and-seed draws, the one whose two images differ most (mean
        absolute pixel difference, blind to which side is better). People tie on differences too small to
        see, and a tie tells the gate nothing. None when the trial ended meanwhile or every draw made the
        same image."""
        cand = self.gen.candidate
        if cand is None:
            return None
        prompts = [self.rng.choice(self.prompts) for _ in range(draws or self.ab_draws)]
        seeds = [self.rng.randrange(2**31) for _ in prompts]
        try:
            ims_c, v_c = self.gen.generate(prompts, seeds, version=cand)
            ims_s, v_s = self.gen.generate(prompts, seeds)
        except ValueError:  # the candidate was promoted or rejected between the two calls
            return None
        if v_c == v_s:
            return None
        diff = [float(np.abs(np.asarray(c, np.float32) - np.asarray(d, np.float32)).mean())
                for c, d in zip(ims_c, ims_s)]
        k = int(np.argmax(diff))
        if diff[k] == 0.0:
            return None
        prompt, seed = prompts[k], seeds[k]
        steps, guidance = self.gen.settings.steps, self.gen.settings.guidance
        ids = [self.store.add_sample(im, prompt, seed, steps, guidance, generator=v)
               for im, v in ((ims_c[k], v_c), (ims_s[k], v_s))]
        if ids[0] == ids[1]:
            return None
        if self.rng.random() < 0.5:
            ids.reverse()
        return {"prompt": prompt, "a": ids[0], "b": ids[1], "version": v_s, "ab": cand}

    def get(self, timeout: float = 0.0) -> dict:
        try:
            pair = self.q.get(timeout=timeout) if timeout else self.q.get_nowait()
        except queue.Empty:
            pair = self.make_pair(quick=True)  # queue drained faster than it fills: the cheapest pair, now
        self.shown.extend((pair["a"], pair["b"]))
        self._wake.set()
        return pair

    def prune(self) -> None:
        if self.keep_unrated is not None:
            queued = {x for p in list(self.q.queue) for x in (p["a"], p["b"])}
            self.store.prune_unrated(self.keep_unrated, keep=queued | set(self.shown))

    def _run(self) -> None:
        # One intra-op thread here (torch's setting is per OS thread): pairs are made ahead of need, and a round
        # training beside them keeps its threads; two 2-thread pools on 2 cores slow both down.
        torch.set_num_threads(1)
        while not self._stop.is_set():
            if self.q.full():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self.q.put(self.make_pair(), timeout=1.0)
                self.prune()
            except queue.Full:
                pass
            except Exception as e:  # keep serving; the error shows in the status line
                self.errors.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}")
                self._stop.wait(2.0)
