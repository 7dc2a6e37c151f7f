"""The RLCM trainer: PPO-style policy gradient with LoRA on a few-step sampler (Oertell et al., 2024).

One epoch = sample a batch of trajectories (rewards computed in a worker thread while the next batch is
sampled), normalise advantages per prompt, join the sampled batches into one trajectory (as ddpo-pytorch
does), then `inner_epochs` passes of clipped-surrogate gradients over shuffled minibatches and every action,
under `accelerator.accumulate`: `optimizer_steps_per_epoch` optimiser steps, each on the mean gradient of an
equal share of the backward passes. Built on accelerate: the same code runs on a CPU, one GPU, or several
processes (`accelerate launch`, or `debug_launcher` for 2 CPU ranks). The same loop runs DDPO when the
pipeline's scheduler is DDIM (see `rlcm.policy.make_policy`).

Facts a reader comparing with the paper or the official code (Owen-Oertell/rlcm) should know:
- At the defaults (one optimiser step per epoch, one inner epoch) every gradient is taken at the weights the
  samples came from, so every ratio is exactly 1 at the update (clipfrac 0): the PPO clip never acts, and the
  update is REINFORCE with per-prompt normalised advantages, as in the paper. The clip matters only with
  several optimiser steps or inner epochs per round.
- Timesteps are diffusers 0.42's `LCMScheduler.set_timesteps` (linspace over the 50-step origin grid); the
  official code uses `origin[::-skip][:n]`. They agree at 2 steps; at 8 steps 4 of the 8 timesteps differ.
- The optimiser is AdamW at a constant learning rate (after an optional linear warm-up, `lr_warmup_epochs`);
  the reference uses Adam with a linear decay.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import lora as lora_utils
from .pipelines import DEFAULT_MODEL, load_pipeline
from .policy import KL_UNITS, LCMPolicy, Trajectory, anchor_penalty, gaussian_log_prob, make_policy
from .prompts import get_prompts
from .rewards import AsyncReward, get_reward
from .stats import PerPromptStatTracker


@dataclass
class RLCMConfig:
    """Defaults run on a 2-core CPU in minutes on the toy LCM; `PRESETS` hold the paper's GPU settings."""

    model: str = DEFAULT_MODEL  # pipeline directory or hub id
    lcm_lora: str | None = None  # SD-1.5 + this LCM-LoRA instead of an LCM checkpoint
    reward: str = "jpeg_compressibility"  # name in rlcm.rewards.REWARDS, or a weighted sum "a+0.1*b"
    # JSON kwargs of the reward factories; {"model": "runs/rm"} for `preference` is loaded by the CLI and handed
    # to RLCMTrainer as `reward_fn` (rlcm takes learned rewards as functions)
    reward_kwargs: dict = field(default_factory=dict)
    prompt_set: str = "toy"  # toy | simple_animals | imagenet_animals | a text file
    train_prompts: int = 16  # size of the training prompt pool (toy set)
    num_steps: int = 4  # inference steps = horizon (RLCM: 2-16; DDPO baseline: 50)
    guidance_scale: float = 8.0
    epochs: int = 30  # sampling rounds
    prompts_per_epoch: int = 8  # distinct prompts per round ...
    images_per_prompt: int = 4  # ... each sampled this often (per-prompt advantages need repeats)
    sample_batch_size: int = 16  # images per sampling forward pass
    train_batch_size: int = 16  # samples per gradient forward pass
    # the paper: one; gradients accumulate over samples and timesteps. The backward passes of an epoch
    # (minibatches x actions x inner_epochs) must split evenly into this many steps.
    optimizer_steps_per_epoch: int = 1
    inner_epochs: int = 1  # PPO passes over each round's samples
    lr: float = 5e-4  # the paper uses 1e-4 with 256 samples per round; the toy default takes 32
    # epochs over which the learning rate ramps up linearly to `lr` (0: none). Adam's first steps move every
    # weight by about lr whatever its gradient's noise; from a LoRA with nonzero B (a previous round's) that
    # includes all of A, where from a fresh LoRA (B = 0, so A's gradient is 0) only B moves
    lr_warmup_epochs: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    clip_range: float = 1e-4  # PPO ratio clip
    adv_clip_max: float = 10.0
    max_grad_norm: float = 5.0
    # Per-step KL to the base model (LoRA off), as in DPOK: keeps what the prompt asked for while the reward
    # moves the rest. The paper has none (0); one extra no-grad UNet pass per action when on.
    kl_coef: float = 0.0
    # "action": the Gaussian KL of each step as is. "x0": each step's KL rescaled to half the mean squared change
    # of the predicted clean latent, sigma^2 / alpha' times the KL (LCM only). In action units the first step,
    # which sets the layout, weighs ~35x less than the last at 4 steps, so the anchor barely holds what the prompt
    # asked for while it freezes fine texture; x0 units anchor every step equally in image terms.
    kl_units: str = "action"
    lora_rank: int = 8
    lora_alpha: float = 8.0
    init_lora: str | None = None  # peft-format adapter.safetensors to start from (a previous round's)
    per_prompt_stat_tracking: bool = True
    stat_buffer_size: int = 32
    stat_min_count: int = 4  # >= images_per_prompt: each prompt is normalised by its own rewards from the start
    # advantages divided by each prompt's reward std, or by the batch's (rlcm.stats); "batch" won less in round
    # probes, its rounds learnt the alignment guard rather than the taste (bench/RESULTS.md, "stronger round 1s")
    adv_scale: str = "prompt"
    eval_every: int = 5  # epochs between held-out evaluations (0: never)
    eval_prompts: int = 32
    eval_seeds: int = 1
    # the held-out prompts' draw (None: seed + 1). Fixed across a studio's rounds, their evaluations are of the same
    # images, so one round's renders of the base and of its handed-over epoch serve the next (studio.rounds)
    eval_prompt_seed: int | None = None
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU)
    output_dir: str = "runs/rlcm"
    checkpoint_every: int = 5  # epochs; resume picks up the latest
    device: str | None = None  # None: accelerate decides

    def __post_init__(self):
        if self.prompts_per_epoch * self.images_per_prompt % self.train_batch_size:
            raise ValueError("prompts_per_epoch * images_per_prompt must be a multiple of train_batch_size")
        if self.lr_warmup_epochs < 0:
            raise ValueError(f"lr_warmup_epochs must be at least 0, got {self.lr_warmup_epochs}")
        if self.kl_units not in KL_UNITS:
            raise ValueError(f"kl_units {self.kl_units!r}; valid: {', '.join(KL_UNITS)}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision {self.mixed_precision!r}; valid: no, fp16, bf16")
        for name in ("optimizer_steps_per_epoch", "inner_epochs", "train_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def samples_per_epoch(self) -> int:
        return self.prompts_per_epoch * self.images_per_prompt

    def backward_passes(self, actions: int) -> int:
        """Backward passes per epoch: one per training minibatch, action and inner epoch."""
        return self.samples_per_epoch // self.train_batch_size * actions * self.inner_epochs

    def accumulation_steps(self, actions: int) -> int:
        """Backward passes per optimiser step; ValueError unless they split evenly into the epoch's steps (a
        remainder would step on a partial sum and carry its gradient into the next epoch)."""
        n, k = self.backward_passes(actions), self.optimizer_steps_per_epoch
        if n % k:
            raise ValueError(
                f"optimizer_steps_per_epoch={k} does not divide the {n} backward passes of an epoch "
                f"({self.samples_per_epoch // self.train_batch_size} minibatches x {actions} actions x "
                f"{self.inner_epochs} inner epochs); choose a divisor of {n}")
        return n // k


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
             clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate for one action of a minibatch: (loss, ratio).

    loss = mean_i max(-A_i r_i, -A_i clip(r_i, 1 - eps, 1 + eps)) with r_i = exp(logp_i - old_logp_i): the
    pessimistic bound, whose gradient vanishes once a ratio has moved past the clip in its advantage's direction.
    Shapes: (b,) each; loss ().
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


def _paper(**kw) -> RLCMConfig:
    base = dict(prompt_set="simple_animals", num_steps=8, guidance_scale=8.0, lr=1e-4, clip_range=1e-4,
                adv_clip_max=10.0, max_grad_norm=5.0, lora_rank=16, lora_alpha=32, mixed_precision="fp16",
                prompts_per_epoch=32, images_per_prompt=8, sample_batch_size=8, train_batch_size=8,
                stat_buffer_size=32, stat_min_count=16, epochs=100, model="SimianLuo/LCM_Dreamshaper_v7")
    base.update(kw)
    return RLCMConfig(**base)


PRESETS: dict[str, Callable[[], RLCMConfig]] = {
    "toy": RLCMConfig,
    "paper_compressibility": lambda: _paper(reward="jpeg_compressibility"),
    "paper_incompressibility": lambda: _paper(reward="jpeg_incompressibility"),
    "paper_aesthetic": lambda: _paper(reward="aesthetic", lora_rank=8, lora_alpha=8),
    "paper_alignment": lambda: _paper(reward="clip_alignment", num_steps=16),
}


class RLCMTrainer:
    """Fine-tunes a LoRA on the pipeline's UNet against a reward. Events go to `callbacks` as dicts."""

    def __init__(self, cfg: RLCMConfig, pipe=None, reward_fn=None, accelerator=None,
                 callbacks: list[Callable[[dict], None]] | None = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.callbacks = callbacks or []
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu")
        set_seed(cfg.seed, device_specific=True)
        acc = self.accelerator
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        self.pipe = pipe if pipe is not None else load_pipeline(cfg.model, cfg.lcm_lora, str(acc.device), dtype)
        self.pipe.to(acc.device)
        self.policy = make_policy(self.pipe, cfg.num_steps, cfg.guidance_scale)
        if cfg.kl_coef and cfg.kl_units == "x0" and not isinstance(self.policy, LCMPolicy):
            raise ValueError("kl_units='x0' needs an LCMScheduler pipeline (the DDIM mean mixes x0 and eps)")
        self.actions = self.policy.num_steps - (1 if self.policy.final_step_is_deterministic else 0)
        self.accum = cfg.accumulation_steps(self.actions)  # checked before the pipeline gets its LoRA
        self.lora_config = lora_utils.add_lora(self.pipe.unet, cfg.lora_rank, cfg.lora_alpha)
        if cfg.init_lora:
            lora_utils.load_lora_file(self.pipe.unet, cfg.init_lora)
        params = [p for p in self.pipe.unet.parameters() if p.requires_grad]
        for p in params:  # trainable LoRA weights stay fp32 under fp16 inference weights
            p.data = p.data.float()
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
        self.unet, self.optimizer = acc.prepare(self.pipe.unet, self.optimizer)
        self.params = params
        self.reward_fn = reward_fn or get_reward(cfg.reward, **cfg.reward_kwargs)
        self.stats = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count, cfg.adv_scale)
        self.train_prompts = get_prompts(cfg.prompt_set, "train", cfg.train_prompts if cfg.prompt_set == "toy"
                                         else None, seed=cfg.seed)
        draw = cfg.seed + 1 if cfg.eval_prompt_seed is None else cfg.eval_prompt_seed
        self.eval_prompt_list = get_prompts(cfg.prompt_set, "heldout", cfg.eval_prompts, seed=draw)
        self.eval_prompt_list = self.eval_prompt_list[: cfg.eval_prompts]
        self.epoch = 0
        self.history: list[dict] = []
        self.reward_queries = 0
        self.train_seconds = 0.0

    # ------------------------------------------------------------ events and evaluation

    def emit(self, event: dict) -> None:
        if self.accelerator.is_main_process:
            for cb in self.callbacks:
                cb(event)

    def generators(self, n: int, salt: int) -> list[torch.Generator]:
        base = (self.cfg.seed * 1_000_003 + salt) * 65_537 + self.accelerator.process_index * 7_919
        return [torch.Generator(self.policy.device).manual_seed(base + i) for i in range(n)]

    @torch.no_grad()
    def sample_images(self, prompts: list[str], seeds: list[int]) -> list:
        """Images for prompts with fixed per-image seeds (the evaluation and comparison path)."""
        out = []
        bs = self.cfg.sample_batch_size
        for i in range(0, len(prompts), bs):
            gens = [torch.Generator(self.policy.device).manual_seed(s) for s in seeds[i:i + bs]]
            out += self.policy.sample(prompts[i:i + bs], generator=gens).images
        return out

    def set_reward_fn(self, reward_fn) -> None:
        """Score from the next sampled batch on with `reward_fn` (e.g. a reward model refitted on more labels).
        Each epoch scores its own fresh samples, so the update stays on-policy; the per-prompt statistics start
        over, since the earlier rewards are on the old function's scale."""
        self.reward_fn = reward_fn
        self.stats = PerPromptStatTracker(self.cfg.stat_buffer_size, self.cfg.stat_min_count,
                                          self.cfg.adv_scale)

    def render_eval(self, base: bool = False) -> list:
        """The images `evaluate` scores: the held-out prompts with their fixed seeds, of the current weights (of the
        base model, adapters disabled, with `base`)."""
        prompts, seeds = self.eval_set()
        self.unet.eval()
        with self.base_model() if base else contextlib.nullcontext():
            return self.sample_images(prompts, seeds)

    def evaluate(self, base: bool = False, images: list | None = None) -> dict:
        """Mean reward (and toy fidelity) on held-out prompts with fixed seeds; of the base model (adapters
        disabled) with `base`. `images`: `render_eval`'s images, already rendered (they are only scored)."""
        prompts, _ = self.eval_set()
        if images is None:
            images = self.render_eval(base)
        elif len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} evaluation prompts")
        rewards = self.reward_fn(images, prompts)
        res = {"eval_reward_mean": float(np.mean(rewards)), "eval_reward_std": float(np.std(rewards))}
        if self.cfg.prompt_set == "toy":
            from .toy.checker import check

            # per image too: a paired comparison with the base on the same prompts and seeds has a standard error
            scores = [round(check(im, p).score, 6) for im, p in zip(images, prompts)]
            res.update(eval_fidelity=float(np.mean(scores)), eval_fidelity_images=scores)
        return res

    def eval_set(self) -> tuple[list[str], list[int]]:
        """The held-out prompts (each `eval_seeds` times) and fixed seeds of `evaluate`."""
        prompts = [p for _ in range(self.cfg.eval_seeds) for p in self.eval_prompt_list]
        return prompts, [10_000 + i for i in range(len(prompts))]

    # ------------------------------------------------------------ one epoch

    def _sample_epoch(self) -> tuple[list[Trajectory], np.ndarray, list[str]]:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 100_003 + self.epoch * 101 + self.accelerator.process_index)
        chosen = [rng.choice(self.train_prompts) for _ in range(cfg.prompts_per_epoch)]
        prompts = [p for p in chosen for _ in range(cfg.images_per_prompt)]
        rewarder = AsyncReward(self.reward_fn)
        trajs, futures = [], []
        self.unet.eval()
        for i in range(0, len(prompts), cfg.sample_batch_size):
            chunk = prompts[i:i + cfg.sample_batch_size]
            tr = self.policy.sample(chunk, generator=self.generators(len(chunk), self.epoch * 10_000 + i))
            if cfg.kl_coef:
                tr.ref_means = self._base_means(tr)
            trajs.append(tr)
            futures.append(rewarder.submit(tr.images, chunk))  # overlaps with the next batch's sampling
        rewards = np.concatenate([f.result() for f in futures])
        rewarder.close()
        self.reward_queries += len(prompts) * self.accelerator.num_processes
        return trajs, rewards, prompts

    @contextlib.contextmanager
    def base_model(self):
        """The pipeline's UNet with its LoRA switched off, for the duration of the block."""
        unet = self.accelerator.unwrap_model(self.unet)
        unet.disable_adapters()
        try:
            yield unet
        finally:
            unet.enable_adapters()

    @torch.no_grad()
    def _base_means(self, tr: Trajectory) -> torch.Tensor:
        """Action means of the base model (adapters disabled) at every visited state."""
        with self.base_model() as unet:
            return torch.stack([self.policy.action_dist(unet, tr, j)[0] for j in range(self.actions)], 1)

    def _advantages(self, rewards: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from accelerate.utils import gather_object

        acc = self.accelerator
        all_rewards = np.array(gather_object(rewards.tolist()), np.float64)
        all_prompts = gather_object(prompts)
        if self.cfg.per_prompt_stat_tracking:
            adv = self.stats.update(all_prompts, all_rewards)
        else:
            adv = (all_rewards - all_rewards.mean()) / (all_rewards.std() + 1e-6)
        n = len(rewards)
        local = adv[acc.process_index * n:(acc.process_index + 1) * n]
        return np.clip(local, -self.cfg.adv_clip_max, self.cfg.adv_clip_max), all_rewards

    def _train_epoch(self, trajs: list[Trajectory], adv: np.ndarray) -> dict:
        """`inner_epochs` passes over the joined samples; `optimizer_steps_per_epoch` optimiser steps."""
        cfg, acc = self.cfg, self.accelerator
        traj = Trajectory.cat(trajs)  # (N, T, ...): rows in the order of `adv`
        n = len(traj.prompts)
        adv_t = torch.tensor(adv, dtype=torch.float32, device=self.policy.device)  # (N,)
        # every epoch starts from zero gradients and a fresh accumulation window (the accelerator's gradient
        # state is shared by every Accelerator in the process, so set it here rather than once)
        for p in self.params:
            p.grad = None
        acc.gradient_accumulation_steps = self.accum
        acc.step = 0
        warm = min(1.0, (self.epoch + 1) / cfg.lr_warmup_epochs) if cfg.lr_warmup_epochs else 1.0
        for group in self.optimizer.param_groups:  # from the epoch count, so a resumed run continues the ramp
            group["lr"] = cfg.lr * warm
        self.unet.train()
        info = {"approx_kl": [], "clipfrac": [], "loss": [], "kl_to_base": [], "grad_norm": []}
        for _ in range(cfg.inner_epochs):
            perm = torch.randperm(n)
            for start in range(0, n, cfg.train_batch_size):
                idx = perm[start:start + cfg.train_batch_size]  # (b,) rows of this minibatch
                for j in torch.randperm(self.actions).tolist():
                    with acc.accumulate(self.unet):
                        with acc.autocast():
                            mean, std = self.policy.action_dist(self.unet, traj, j, idx)
                        logp = gaussian_log_prob(traj.actions[idx, j], mean, std)  # (b,) float32
                        old = traj.log_probs[idx, j].to(logp.device)
                        loss, ratio = ppo_loss(logp, old, adv_t[idx], cfg.clip_range)
                        if traj.ref_means is not None:
                            kl = anchor_penalty(mean, traj.ref_means[idx, j].to(mean.device), std, cfg.kl_units)
                            loss = loss + cfg.kl_coef * kl.mean()
                            info["kl_to_base"].append(kl.mean().item())
                        acc.backward(loss)  # divided by the accumulation steps: the step sees the mean
                        if acc.sync_gradients:
                            info["grad_norm"].append(float(acc.clip_grad_norm_(self.params, cfg.max_grad_norm)))
                        self.optimizer.step()  # a no-op until the accumulation window is full
                        self.optimizer.zero_grad(set_to_none=True)
                    info["loss"].append(float(loss.detach()))
                    info["approx_kl"].append(0.5 * ((logp - old) ** 2).mean().item())
                    info["clipfrac"].append(((ratio - 1).abs() > cfg.clip_range).float().mean().item())
        return {**{k: float(np.mean(v)) for k, v in info.items() if v}, "lr": cfg.lr * warm}

    # ------------------------------------------------------------ loop, checkpoints

    def train(self, stop: threading.Event | None = None) -> list[dict]:
        """Run until `cfg.epochs` (resuming from the latest checkpoint) or until `stop` is set."""
        cfg = self.cfg
        out = Path(cfg.output_dir)
        if self.accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        self.resume()
        if self.epoch == 0 and cfg.eval_every:
            row = {"epoch": 0, "time": 0.0, "reward_queries": 0, **self.evaluate()}
            self._log(row)
        while self.epoch < cfg.epochs:
            if stop is not None and stop.is_set():
                self.emit({"type": "cancelled", "epoch": self.epoch})
                break
            t0 = time.time()
            trajs, rewards, prompts = self._sample_epoch()
            adv, all_rewards = self._advantages(rewards, prompts)
            info = self._train_epoch(trajs, adv)
            self.train_seconds += time.time() - t0
            self.epoch += 1
            row = {"epoch": self.epoch, "time": self.train_seconds, "reward_queries": self.reward_queries,
                   "reward_mean": float(all_rewards.mean()), "reward_std": float(all_rewards.std()), **info}
            if cfg.eval_every and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
                row.update(self.evaluate())
            self._log(row)
            if self.epoch % cfg.checkpoint_every == 0 or self.epoch == cfg.epochs:
                self.save_checkpoint()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.save_lora(out / "lora")
        self.emit({"type": "done", "epoch": self.epoch, "lora": str(out / "lora")})
        return self.history

    def _log(self, row: dict) -> None:
        self.history.append(row)
        if self.accelerator.is_main_process:
            with open(Path(self.cfg.output_dir) / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        self.emit({"type": "epoch", **row})

    def save_lora(self, directory: str | Path) -> Path:
        return lora_utils.save_lora(type(self.pipe), self.accelerator.unwrap_model(self.unet), self.lora_config,
                                    directory)

    def save_checkpoint(self) -> None:
        """Write `output_dir/checkpoint/` (adapter, optimiser and loop state, the run's config) via a swap.

        A crash at any point leaves a complete `checkpoint` or a complete `checkpoint.old` that the next
        start puts back (`settle_checkpoint`); leftovers of an earlier crash are cleared first.
        """
        if not self.accelerator.is_main_process:
            return
        out = Path(self.cfg.output_dir)
        settle_checkpoint(out)
        ck, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
        tmp.mkdir(parents=True)
        lora_utils.save_lora_state(self.accelerator.unwrap_model(self.unet), tmp / "adapter.safetensors")
        torch.save({"optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "stats": self.stats.state_dict(),
                    "history": self.history, "reward_queries": self.reward_queries,
                    "train_seconds": self.train_seconds}, tmp / "trainer_state.pt")
        (tmp / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        if ck.exists():
            ck.rename(old)
            tmp.rename(ck)
            shutil.rmtree(old)
        else:
            tmp.rename(ck)

    def resume(self) -> bool:
        """Load the latest checkpoint of `output_dir`, if any; the log is cut back to the checkpoint's epochs.

        Epochs run after the checkpoint (lost in a crash) are run again, so log.jsonl is rewritten from the
        checkpoint's history: no epoch appears twice. The trainer keeps the config it was built with; to
        continue a run with the config it started with, build it from `resume_config(cfg)`.
        """
        out = Path(self.cfg.output_dir)
        if self.accelerator.is_main_process:
            settle_checkpoint(out)
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()
        ck = out / "checkpoint"
        if not _complete(ck):
            return False
        lora_utils.load_lora_file(self.accelerator.unwrap_model(self.unet), ck / "adapter.safetensors")
        state = torch.load(ck / "trainer_state.pt", weights_only=False, map_location="cpu")
        self.optimizer.load_state_dict(state["optimizer"])
        self.stats.load_state_dict(state["stats"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.reward_queries, self.train_seconds = state["reward_queries"], state["train_seconds"]
        if self.accelerator.is_main_process:
            log = out / "log.jsonl"
            tmp = log.with_name("log.jsonl.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in self.history))
            tmp.replace(log)
        self.emit({"type": "resumed", "epoch": self.epoch})
        return True


def _complete(ck: Path) -> bool:
    return (ck / "trainer_state.pt").is_file() and (ck / "adapter.safetensors").is_file()


def settle_checkpoint(output_dir: str | Path) -> None:
    """Tidy what a crash during `save_checkpoint` left: `checkpoint.old` back in place if `checkpoint` is
    missing or incomplete, then stale `checkpoint.old` / `checkpoint.tmp` removed (a tmp is never trusted)."""
    out = Path(output_dir)
    ck, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    if not _complete(ck) and _complete(old):
        shutil.rmtree(ck, ignore_errors=True)
        old.rename(ck)
    for stale in (old, tmp):
        shutil.rmtree(stale, ignore_errors=True)


# where a run happens, which may change between a crash and its resume; everything else belongs to the run
_PLACE_FIELDS = ("output_dir", "device", "mixed_precision")


def resume_config(cfg: RLCMConfig) -> RLCMConfig:
    """The config of the run checkpointed in `cfg.output_dir` (epochs, lr, prompts ...), or `cfg` without one.

    Only where it runs (output dir, device, precision) comes from `cfg`: a resumed run ends where it was
    meant to, whatever the caller's settings are now. Checkpoints older than this read the run's config.json.
    """
    out = Path(cfg.output_dir)
    settle_checkpoint(out)
    if not _complete(out / "checkpoint"):
        return cfg
    for path in (out / "checkpoint" / "config.json", out / "config.json"):
        if path.is_file():
            saved = json.loads(path.read_text())
            break
    else:
        return cfg
    known = {f.name for f in fields(RLCMConfig)}
    kept = {k: v for k, v in saved.items() if k in known and k not in _PLACE_FIELDS}
    return RLCMConfig(**{**asdict(cfg), **kept})


def config_from_args(preset: str = "toy", **overrides) -> RLCMConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    cfg = PRESETS[preset]()
    names = {f.name for f in fields(RLCMConfig)}
    bad = set(overrides) - names
    if bad:
        raise ValueError(f"unknown config fields {sorted(bad)}")
    return RLCMConfig(**{**asdict(cfg), **overrides})
