"""Few-step samplers as MDP policies: trajectories with per-step log-probs, and their recomputation.

`LCMPolicy` is the RLCM policy: each LCMScheduler step is a Gaussian action
    x' ~ N(sqrt(a') * denoised, (1 - a') I),   denoised = c_out * x0_hat + c_skip * x_t
(step 7 of `LCMScheduler.step`, diffusers 0.42). The final step adds no noise (`prev = denoised`), so it is
not an action: trajectories of n steps have n - 1 stochastic actions, and the reward depends on them only.
`DDIMPolicy` is the DDPO baseline: DDIM with eta = 1, whose posterior is Gaussian at every step.

Both reproduce their diffusers pipeline exactly for the same generator(s) (same random draws in the same
order), including the scheduler's clip / dynamic-threshold step on x0 when its config turns one on, and compute
log-probs in float32 whatever the model dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class Trajectory:
    """One batch of rollouts. Shapes: B samples, T actions, latents (C, H, W)."""

    prompts: list[str]
    embeds: torch.Tensor  # (B, L, D) prompt embeddings (cond), or (2B, L, D) [uncond; cond] with CFG
    states: torch.Tensor  # (B, T, C, H, W) x_t before each action
    actions: torch.Tensor  # (B, T, C, H, W) x_{t'} taken
    timesteps: torch.Tensor  # (T,) the timestep of each action
    log_probs: torch.Tensor  # (B, T) float32 log-prob of each action when sampled
    latents: torch.Tensor  # (B, C, H, W) final clean latents (decoded into images)
    images: list  # B PIL images
    ref_means: torch.Tensor | None = None  # (B, T, C, H, W) action means of the base model (KL anchor)

    @property
    def uses_cfg(self) -> bool:
        """True when `embeds` holds [uncond; cond] (2B rows) for classifier-free guidance."""
        return self.embeds.shape[0] == 2 * len(self.prompts) != 0

    @classmethod
    def cat(cls, trajs: list["Trajectory"]) -> "Trajectory":
        """One trajectory of all samples of `trajs` (same sampler, same timesteps), in order."""
        if not trajs:
            raise ValueError("no trajectories to join")
        first = trajs[0]
        if any(not torch.equal(t.timesteps, first.timesteps) for t in trajs):
            raise ValueError("trajectories sampled with different timesteps cannot be joined")
        if first.uses_cfg:  # keep the [uncond; cond] halves apart: (2B, L, D) -> (2 sum B, L, D)
            halves = [t.embeds.chunk(2) for t in trajs]
            embeds = torch.cat([h[0] for h in halves] + [h[1] for h in halves])
        else:
            embeds = torch.cat([t.embeds for t in trajs])
        cat = lambda name: torch.cat([getattr(t, name) for t in trajs])  # noqa: E731
        return cls(prompts=[p for t in trajs for p in t.prompts], embeds=embeds, states=cat("states"),
                   actions=cat("actions"), timesteps=first.timesteps, log_probs=cat("log_probs"),
                   latents=cat("latents"), images=[im for t in trajs for im in t.images],
                   ref_means=cat("ref_means") if first.ref_means is not None else None)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of x under N(mean, std^2 I), averaged over non-batch dims (as DDPO), in float32. (B,)"""
    x, mean, std = x.float(), mean.float(), std.float()
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, lp.ndim)))


class _Policy:
    """Shared plumbing: prompt encoding, the UNet call, decoding."""

    def __init__(self, pipe, num_steps: int, guidance_scale: float):
        self.pipe = pipe
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        # private scheduler: the pipeline's one keeps per-call state and may be used by another thread
        self.scheduler = self.scheduler_class.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(num_steps, device="cpu")
        self.alphas = self.scheduler.alphas_cumprod.float()

    scheduler_class: type

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def uses_w_embedding(self) -> bool:
        return self.pipe.unet.config.time_cond_proj_dim is not None

    @property
    def uses_cfg(self) -> bool:
        """Classifier-free guidance by two passes: the DDIM teacher, or an SD + LCM-LoRA pipeline."""
        return not self.uses_w_embedding and self.guidance_scale > 1

    def encode(self, prompts: list[str]) -> torch.Tensor:
        cond, uncond = self.pipe.encode_prompt(prompts, self.device, 1, self.uses_cfg, negative_prompt=None)
        return torch.cat([uncond, cond]) if self.uses_cfg else cond

    def predict(self, unet, x: torch.Tensor, t, embeds: torch.Tensor) -> torch.Tensor:
        """The UNet output (eps or v) at (x, t), guided as the pipeline guides it."""
        b = x.shape[0]
        cond = None
        if self.uses_w_embedding:
            w = torch.full((b,), self.guidance_scale - 1)
            cond = self.pipe.get_guidance_scale_embedding(w, embedding_dim=self.pipe.unet.config.time_cond_proj_dim)
            cond = cond.to(device=x.device, dtype=x.dtype)
        if self.uses_cfg:
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=embeds, timestep_cond=cond).sample
            uncond, text = out.chunk(2)
            return uncond + self.guidance_scale * (text - uncond)
        return unet(x, t, encoder_hidden_states=embeds, timestep_cond=cond).sample

    def decode(self, latents: torch.Tensor) -> list:
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return self.pipe.image_processor.postprocess(image, output_type="pil")

    def initial_latents(self, batch: int, generator, height: int | None, width: int | None) -> torch.Tensor:
        scale = self.pipe.vae_scale_factor
        h = (height or self.pipe.unet.config.sample_size * scale) // scale
        w = (width or self.pipe.unet.config.sample_size * scale) // scale
        shape = (batch, self.pipe.unet.config.in_channels, h, w)
        x = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        return x * self.scheduler.init_noise_sigma

    def _step(self, unet, x, i: int, embeds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, clean) of the action at step index i."""
        raise NotImplementedError

    def x0_eps(self, out: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean sample and noise from the model output, as the scheduler reads it (eps or v prediction)."""
        sa, sb = a.sqrt().to(x.dtype), (1 - a).sqrt().to(x.dtype)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return (x - sb * out) / sa, out
        if kind == "v_prediction":
            return sa * x - sb * out, sa * out + sb * x
        raise ValueError(f"prediction_type {kind!r} is not supported; valid: epsilon, v_prediction")

    def clip_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding or clipping of the predicted x0 when the scheduler's config asks for it (LCMScheduler
        step 5, DDIMScheduler step 4), with the scheduler's own code; the identity at the default config."""
        cfg = self.scheduler.config
        if cfg.thresholding:
            return self.scheduler._threshold_sample(x0)
        if cfg.clip_sample:
            return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return x0

    def _batch_embeds(self, embeds: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
        if not self.uses_cfg:
            return embeds[idx]
        uncond, cond = embeds.chunk(2)
        return torch.cat([uncond[idx], cond[idx]])

    @torch.no_grad()
    def sample(self, prompts: list[str], generator=None, height: int | None = None,
               width: int | None = None, decode: bool = True) -> Trajectory:
        """Roll out one trajectory per prompt; `generator` may be one torch.Generator or one per prompt."""
        embeds = self.encode(prompts)
        x = self.initial_latents(len(prompts), generator, height, width)
        states, actions, logps = [], [], []
        unet = self.pipe.unet
        for i in range(self.num_steps):
            mean, std, clean = self._step(unet, x, i, embeds)
            if i == self.num_steps - 1 and self.final_step_is_deterministic:
                x = clean
                break
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            nxt = (mean + std * noise).to(x.dtype)
            states.append(x)
            actions.append(nxt)
            logps.append(gaussian_log_prob(nxt, mean, std))
            x = nxt
        stack = lambda xs, ref: torch.stack(xs, 1) if xs else ref.new_zeros((ref.shape[0], 0, *ref.shape[1:]))
        return Trajectory(
            prompts=list(prompts), embeds=embeds, states=stack(states, x), actions=stack(actions, x),
            timesteps=self.scheduler.timesteps[: len(actions)].clone(),
            log_probs=torch.stack(logps, 1) if logps else torch.zeros(len(prompts), 0),
            latents=x, images=self.decode(x) if decode else [])

    final_step_is_deterministic: bool = True

    def action_dist(self, unet, traj: Trajectory, j: int, idx: torch.Tensor | slice = slice(None)):
        """(mean, std) of the step-j Gaussian for samples idx under `unet`'s current weights."""
        mean, std, _ = self._step(unet, traj.states[idx, j], j, self._batch_embeds(traj.embeds, idx))
        return mean, std

    def log_prob(self, unet, traj: Trajectory, j: int, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Log-prob (float32, (b,)) of the actions of step j for samples idx under `unet`'s current weights."""
        mean, std = self.action_dist(unet, traj, j, idx)
        return gaussian_log_prob(traj.actions[idx, j], mean, std)


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two Gaussians of equal std, averaged over non-batch dims like the log-probs, float32. (B,)"""
    d = (mean.float() - ref_mean.float()) / std.float()
    return 0.5 * d.pow(2).mean(dim=tuple(range(1, d.ndim)))


KL_UNITS = ("action", "x0")  # the units `anchor_penalty` (and RLCMConfig.kl_units) accept


def anchor_penalty(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, units: str = "action"):
    """Per-sample penalty for one step's distance to the base model. (B,)

    "action": the Gaussian KL. "x0" (LCM steps, mean = sqrt(a') * denoised and std^2 = 1 - a'): the KL times
    std^2 / a', i.e. half the mean squared change of the predicted clean latent, the same scale at every step.
    """
    kl = gaussian_kl(mean, ref_mean, std)
    if units == "x0":
        var = std.float() ** 2
        return kl * (var / (1 - var))
    if units not in KL_UNITS:
        raise ValueError(f"units {units!r}; valid: {', '.join(KL_UNITS)}")
    return kl


class LCMPolicy(_Policy):
    """RLCM's policy over LCMScheduler steps (LatentConsistencyModelPipeline, or SD + LCM-LoRA)."""

    from diffusers import LCMScheduler as scheduler_class  # noqa: N813

    def _step(self, unet, x, i, embeds):
        s = self.scheduler
        t = s.timesteps[i]
        a = self.alphas[t]
        a_prev = self.alphas[s.timesteps[i + 1]] if i + 1 < len(s.timesteps) else torch.tensor(1.0)
        out = self.predict(unet, x, t, embeds)
        # 3. boundary conditions; 4. x0 from the model output; 5. clip / threshold x0; 6. denoised
        # (LCMScheduler.step numbering)
        c_skip, c_out = s.get_scalings_for_boundary_condition_discrete(t)
        x0, _ = self.x0_eps(out, x, a)
        x0 = self.clip_x0(x0)
        denoised = c_out * x0 + c_skip * x
        # 7. the policy: x' ~ N(sqrt(a') denoised, (1 - a') I)
        mean = a_prev.sqrt().to(x.dtype) * denoised
        std = (1 - a_prev).sqrt().expand(1).to(x.device)  # a (1,) CPU tensor can't meet CUDA ones
        return mean, std, denoised


class DDIMPolicy(_Policy):
    """DDPO's policy: DDIM with eta = 1 (StableDiffusionPipeline with DDIMScheduler, CFG)."""

    from diffusers import DDIMScheduler as scheduler_class  # noqa: N813

    final_step_is_deterministic = False  # every DDIM step with eta=1 injects noise (DDPO keeps all of them)
    eta = 1.0

    def _step(self, unet, x, i, embeds):
        s = self.scheduler
        t = s.timesteps[i]
        prev_t = t - s.config.num_train_timesteps // s.num_inference_steps
        a = self.alphas[t]
        a_prev = self.alphas[prev_t] if prev_t >= 0 else s.final_alpha_cumprod.float()
        x0, eps = self.x0_eps(self.predict(unet, x, t, embeds), x, a)
        # step 4 of DDIMScheduler.step; eps stays the model's (the pipeline does not pass use_clipped_model_output)
        x0 = self.clip_x0(x0)
        var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        std = self.eta * var.sqrt()
        mean = a_prev.sqrt().to(x.dtype) * x0 + (1 - a_prev - std**2).sqrt().to(x.dtype) * eps
        return mean, std.expand(1).to(x.device), x0


def make_policy(pipe, num_steps: int, guidance_scale: float) -> _Policy:
    """The policy matching a pipeline's scheduler (LCMScheduler -> RLCM, DDIMScheduler -> DDPO)."""
    name = type(pipe.scheduler).__name__
    if name == "LCMScheduler":
        if num_steps < 2:
            raise ValueError("RLCM needs at least 2 inference steps (the last LCM step adds no noise)")
        return LCMPolicy(pipe, num_steps, guidance_scale)
    if name == "DDIMScheduler":
        return DDIMPolicy(pipe, num_steps, guidance_scale)
    raise ValueError(f"unsupported scheduler {name}; valid: LCMScheduler (RLCM), DDIMScheduler (DDPO)")
