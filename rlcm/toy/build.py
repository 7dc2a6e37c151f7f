"""Build the embedded toy models from scratch: `python -m rlcm.toy.build [--stages ...]`.

Stages (each resumable from checkpoints under `--work`, skipped when its output exists):
  data     render training scenes and captions
  vae      AutoencoderKL on random 32x32 crops (it is fully convolutional)
  latents  encode every scene once; set the VAE scaling factor
  teacher  latent diffusion teacher: UNet + text encoder, eps-prediction, min-SNR, CFG dropout
  lcd      latent consistency distillation with the w (guidance) embedding, as in the LCM paper
  clip     a tiny open_clip model trained contrastively with attribute-swapped hard negatives
  shrink   store the UNets and the CLIP in fp16 (they load back as fp32; the card measures these weights)
  card     evaluate everything on held-out prompts and write data/models/README.md
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import models, world

STAGES = ("data", "vae", "latents", "teacher", "lcd", "clip", "shrink", "card")


@dataclass
class BuildConfig:
    out: Path = Path("data/models")  # where the shipped pipelines go
    work: Path = Path("data/build")  # checkpoints and caches (not committed)
    n_scenes: int = 30_000  # training scenes rendered once
    seed: int = 0
    vae_steps: int = 1_500
    vae_batch: int = 32
    teacher_steps: int = 10_000  # shape binding comes late: 27% of shapes right at 4,500 steps, 89% at 10,000
    teacher_batch: int = 32
    teacher_lr: float = 5e-4
    # Continue a teacher from a saved pipeline (its UNet and text encoder) at this step of the schedule, with a
    # fresh optimiser and a 200-step re-warmup: how a shipped teacher is trained further when the work
    # directory's checkpoint is gone.
    teacher_init: Path | None = None
    teacher_init_step: int = 0
    cond_dropout: float = 0.1  # empty prompt this often, for classifier-free guidance
    min_snr_gamma: float = 5.0
    # Offset noise (per-image, per-channel constant added to the noise): SD's schedule leaks ~7% of the
    # signal at t=999, so a model learns to read the global colour from the noise's mean instead of the
    # prompt, and at sampling time (mean ~0) every background comes out the same. Toy scenes are mostly
    # background colour, so this matters more here than anywhere.
    offset_noise: float = 0.15
    lcd_steps: int = 1_500
    lcd_batch: int = 32
    lcd_lr: float = 2e-4
    w_min: float = 2.0  # guidance w = guidance_scale - 1, sampled per example during distillation
    w_max: float = 8.0
    ddim_steps: int = 50  # the teacher ODE solver grid for distillation (skip = 1000 / 50)
    ema_decay: float = 0.95  # target network of consistency distillation
    time_cond_proj_dim: int = 64
    clip_steps: int = 3_000
    clip_batch: int = 128
    eval_every: int = 1_000
    eval_prompts: int = 64  # held-out prompts of the teacher's and the LCM's progress evaluations
    card_prompts: int = 256  # held-out prompts of the model card's evaluation (x2 seeds)
    ckpt_every: int = 250


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_at(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))))


class Checkpoint:
    """Resumable training state for one stage (internal build cache; shipped weights are safetensors)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self, **objs) -> int:
        if not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=False)
        for k, o in objs.items():
            o.load_state_dict(state[k])
        random.setstate(state["py_rng"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed {self.path.name} at step {state['step']}")
        return state["step"]

    def save(self, step: int, **objs) -> None:
        state = {k: o.state_dict() for k, o in objs.items()}
        state.update(step=step, py_rng=random.getstate(), torch_rng=torch.get_rng_state())
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def train_loop(name: str, cfg: BuildConfig, step: int, total: int, opt: torch.optim.Optimizer,
               lr: Callable[[int], float], loss_fn: Callable[[], torch.Tensor], ck: Checkpoint, saved: dict,
               clip: list | None = None, after_step: Callable[[], None] | None = None,
               evaluate: Callable[[int], None] | None = None, loss_digits: int = 4) -> None:
    """The optimisation loop every stage shares: lr schedule, one step, progress log, checkpoint, eval.

    `loss_fn` draws its own batch, so a stage's random draws happen in the same order as before the loop was
    shared (a resumed build stays bit-identical). `saved` names the objects the checkpoint holds."""
    t0 = time.time()
    while step < total:
        for g in opt.param_groups:
            g["lr"] = lr(step)
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip, 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        step += 1
        if step % 50 == 0:
            log(f"{name} step {step}/{total} loss {loss.item():.{loss_digits}f} ({(time.time() - t0) / 50:.2f}s/step)")
            t0 = time.time()
        if step % cfg.ckpt_every == 0:
            ck.save(step, **saved)
        if evaluate is not None and (step % cfg.eval_every == 0 or step == total):
            evaluate(step)
            t0 = time.time()  # the eval's time is not a training step's


# ---------------------------------------------------------------- data


def stage_data(cfg: BuildConfig) -> None:
    path = cfg.work / "scenes.npz"
    if path.exists():
        return
    log(f"rendering {cfg.n_scenes} scenes")
    images = np.zeros((cfg.n_scenes, world.SIZE, world.SIZE, 3), np.uint8)
    full, short = [], []
    for i in range(cfg.n_scenes):
        sc = world.sample_scene(cfg.seed * 10_000_000 + i, "train")
        images[i] = np.asarray(world.render(sc))
        full.append(world.caption(sc, drop=False))
        short.append(world.caption(sc, drop=True))
    tok = models.make_tokenizer()
    enc = lambda caps: tok(caps, padding="max_length", max_length=models.MAX_TOKENS, truncation=True,
                           return_tensors="np").input_ids
    np.savez(path, images=images, ids_full=enc(full), ids_short=enc(short), ids_empty=enc([""]),
             full=np.array(full), short=np.array(short))


def load_data(cfg: BuildConfig) -> dict:
    d = np.load(cfg.work / "scenes.npz")
    return {k: d[k] for k in d.files}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


# ---------------------------------------------------------------- vae


def stage_vae(cfg: BuildConfig) -> None:
    out = cfg.work / "vae"
    if (out / "config.json").exists():
        return
    data = load_data(cfg)["images"]
    vae = models.make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ck = Checkpoint(cfg.work / "vae.ckpt")
    step = ck.load(model=vae, opt=opt)

    def loss_fn() -> torch.Tensor:
        idx = np.random.randint(0, len(data), cfg.vae_batch)
        oy, ox = np.random.randint(0, world.SIZE - 32 + 1, 2) // 4 * 4
        x = to_tensor(data[idx, oy:oy + 32, ox:ox + 32])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        return (rec - x).abs().mean() + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()

    train_loop("vae", cfg, step, cfg.vae_steps, opt, lambda s: lr_at(s, cfg.vae_steps, 1e-3, 100), loss_fn, ck,
               dict(model=vae, opt=opt))
    with torch.no_grad():
        x = to_tensor(data[:256])
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        log(f"vae full-image L1 {(rec - x).abs().mean().item():.4f} (on [-1, 1])")
    vae.save_pretrained(out)


# ---------------------------------------------------------------- latents


def stage_latents(cfg: BuildConfig) -> None:
    path = cfg.work / "latents.pt"
    if path.exists():
        return
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(cfg.work / "vae")
    data = load_data(cfg)["images"]
    lat = []
    with torch.no_grad():
        for i in range(0, len(data), 256):
            lat.append(vae.encode(to_tensor(data[i:i + 256])).latent_dist.mode())
    lat = torch.cat(lat)
    sf = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=sf)
    vae.save_pretrained(cfg.work / "vae")
    torch.save(lat * sf, path)
    log(f"latents {tuple(lat.shape)}, scaling factor {sf:.4f}")


# ---------------------------------------------------------------- teacher


def _components(cfg: BuildConfig):
    from diffusers import AutoencoderKL

    return models.make_tokenizer(), AutoencoderKL.from_pretrained(cfg.work / "vae")


def _batch_ids(data: dict, idx: np.ndarray, dropout: float) -> torch.Tensor:
    use_full = np.random.rand(len(idx)) < 0.5
    ids = np.where(use_full[:, None], data["ids_full"][idx], data["ids_short"][idx])
    drop = np.random.rand(len(idx)) < dropout
    ids[drop] = data["ids_empty"][0]
    return torch.from_numpy(ids).long()


def teacher_pipeline(tok, vae, te, unet):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sched = DDIMScheduler(**models.noise_schedule(), clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def lcm_pipeline(tok, vae, te, unet):
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    sched = LCMScheduler(**models.noise_schedule(), clip_sample=False, set_alpha_to_one=True)
    return LatentConsistencyModelPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


def evaluate(pipe, prompts: list[str], seeds: list[int], batch: int = 64, **kw) -> dict:
    """Prompt fidelity of a pipeline by the toy checker."""
    from .checker import fidelity

    pipe.set_progress_bar_config(disable=True)
    images, ps = [], []
    for seed in seeds:
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            gen = torch.Generator().manual_seed(seed * 100_003 + i)
            images += pipe(chunk, generator=gen, output_type="pil", **kw).images
            ps += chunk
    res = fidelity(images, ps)
    res["images"] = images  # type: ignore[assignment]
    return res


def save_grid(images, path: Path, cols: int = 8) -> None:
    from PIL import Image

    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * world.SIZE, rows * world.SIZE), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * world.SIZE, (i // cols) * world.SIZE))
    grid.save(path)


def _fmt(res: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float))


def offset_noise(x0: torch.Tensor, strength: float) -> torch.Tensor:
    return torch.randn_like(x0) + strength * torch.randn(x0.shape[0], x0.shape[1], 1, 1)


def _load_teacher_weights(pipe_dir: Path, unet, te) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    # load_state_dict copies into the fresh fp32 parameters, so the fp16 files need no cast here
    unet.load_state_dict(UNet2DConditionModel.from_pretrained(pipe_dir / "unet").state_dict())
    te.load_state_dict(CLIPTextModel.from_pretrained(pipe_dir / "text_encoder").state_dict())


def stage_teacher(cfg: BuildConfig) -> None:
    out = cfg.out / "toy-teacher"
    if (out / "model_index.json").exists():
        return
    from diffusers import DDPMScheduler

    data = load_data(cfg)
    latents = torch.load(cfg.work / "latents.pt")
    tok, vae = _components(cfg)
    te, unet = models.make_text_encoder(tok), models.make_unet()
    noise_sched = DDPMScheduler(**models.noise_schedule())
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.teacher_lr, weight_decay=1e-2)
    ck = Checkpoint(cfg.work / "teacher.ckpt")
    step = ck.load(unet=unet, te=te, opt=opt)
    if cfg.teacher_init is not None and step == 0:
        _load_teacher_weights(cfg.teacher_init, unet, te)
        step = cfg.teacher_init_step
        log(f"teacher starts from {cfg.teacher_init} at step {step}")
    eval_prompts = world.prompts("heldout", cfg.eval_prompts, seed=1)

    def lr(step: int) -> float:
        base = lr_at(step, cfg.teacher_steps, cfg.teacher_lr)
        if cfg.teacher_init is not None:  # the fresh optimiser warms up again (lr_at's warmup is at step 0)
            base *= min(1.0, (step - cfg.teacher_init_step + 1) / 200)
        return base

    def loss_fn() -> torch.Tensor:
        idx = np.random.randint(0, len(latents), cfg.teacher_batch)
        x0 = latents[idx]
        ids = _batch_ids(data, idx, cfg.cond_dropout)
        noise = offset_noise(x0, cfg.offset_noise)
        t = torch.randint(0, 1000, (len(idx),))
        xt = noise_sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=te(ids)[0]).sample
        # min-SNR-gamma weighting for eps-prediction: min(snr, gamma) / snr
        w = torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]
        return (w * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()

    def eval_at(step: int) -> None:
        pipe = teacher_pipeline(tok, vae, te.eval(), unet.eval())
        with torch.no_grad():
            res = evaluate(pipe, eval_prompts, [0], num_inference_steps=20, guidance_scale=5.0)
        save_grid(res.pop("images")[:32], cfg.work / f"teacher_{step}.png")
        log(f"teacher eval step {step} (20 DDIM, cfg 5, held-out): {_fmt(res)}")
        te.train(), unet.train()

    train_loop("teacher", cfg, step, cfg.teacher_steps, opt, lr, loss_fn, ck, dict(unet=unet, te=te, opt=opt),
               clip=params, evaluate=eval_at)
    teacher_pipeline(tok, vae, te, unet).save_pretrained(out)


# ---------------------------------------------------------------- latent consistency distillation


def _boundary(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """c_skip, c_out of LCMScheduler (consistency boundary condition)."""
    t = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (t**2 + sigma_data**2)
    c_out = t / (t**2 + sigma_data**2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def stage_lcd(cfg: BuildConfig) -> None:
    out = cfg.out / "toy-lcm"
    if (out / "model_index.json").exists():
        return
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    teacher_pipe = StableDiffusionPipeline.from_pretrained(cfg.out / "toy-teacher", local_files_only=True)
    tok, vae, te, teacher = teacher_pipe.tokenizer, teacher_pipe.vae, teacher_pipe.text_encoder, teacher_pipe.unet
    te.requires_grad_(False), teacher.requires_grad_(False)
    student = UNet2DConditionModel(**models.unet_config(cfg.time_cond_proj_dim))
    missing, _ = student.load_state_dict(teacher.state_dict(), strict=False)
    assert all(k.startswith("time_embedding.cond_proj") for k in missing), missing
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)  # starts as the teacher
    target = copy.deepcopy(student).requires_grad_(False)
    data = load_data(cfg)
    latents = torch.load(cfg.work / "latents.pt")
    alphas = teacher_pipe.scheduler.alphas_cumprod
    skip = 1000 // cfg.ddim_steps
    ddim_t = torch.arange(1, cfg.ddim_steps + 1) * skip - 1  # 19, 39, ..., 999
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lcd_lr, weight_decay=0.0)
    ck = Checkpoint(cfg.work / "lcd.ckpt")
    step = ck.load(student=student, target=target, opt=opt)
    from diffusers import LatentConsistencyModelPipeline

    w_embed = LatentConsistencyModelPipeline.get_guidance_scale_embedding
    eval_prompts = world.prompts("heldout", cfg.eval_prompts, seed=1)
    empty = torch.from_numpy(data["ids_empty"]).long()

    def x0_eps(model_out, x, t):
        a = alphas[t][:, None, None, None]
        return (x - (1 - a).sqrt() * model_out) / a.sqrt(), model_out

    def loss_fn() -> torch.Tensor:
        idx = np.random.randint(0, len(latents), cfg.lcd_batch)
        x0 = latents[idx]
        ids = _batch_ids(data, idx, 0.0)
        with torch.no_grad():
            cond = te(ids)[0]
            uncond = te(empty.expand(len(idx), -1))[0]
        # 1. sample a solver interval (t_n+k -> t_n) on the DDIM grid
        k = torch.randint(0, cfg.ddim_steps, (len(idx),))
        t_start = ddim_t[k]
        t_end = (t_start - skip).clamp(min=0)
        noise = offset_noise(x0, cfg.offset_noise)
        a_s = alphas[t_start][:, None, None, None]
        x_start = a_s.sqrt() * x0 + (1 - a_s).sqrt() * noise
        # 2. guidance w and its embedding (the pipeline feeds w = guidance_scale - 1)
        w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(len(idx))
        w_emb = w_embed(None, w, embedding_dim=cfg.time_cond_proj_dim)
        # 3. student consistency function at t_start
        c_skip_s, c_out_s = _boundary(t_start)
        pred_x0, _ = x0_eps(student(x_start, t_start, timestep_cond=w_emb, encoder_hidden_states=cond).sample,
                            x_start, t_start)
        model_pred = c_skip_s * x_start + c_out_s * pred_x0
        with torch.no_grad():
            # 4. one DDIM step of the guided teacher from t_start to t_end
            both = teacher(torch.cat([x_start, x_start]), torch.cat([t_start, t_start]),
                           encoder_hidden_states=torch.cat([cond, uncond])).sample
            c_x0, c_eps = x0_eps(both[:len(idx)], x_start, t_start)
            u_x0, u_eps = x0_eps(both[len(idx):], x_start, t_start)
            wv = w[:, None, None, None]
            g_x0, g_eps = c_x0 + wv * (c_x0 - u_x0), c_eps + wv * (c_eps - u_eps)
            a_e = alphas[t_end][:, None, None, None]
            x_end = a_e.sqrt() * g_x0 + (1 - a_e).sqrt() * g_eps
            # 5. target network's consistency function at t_end
            c_skip_e, c_out_e = _boundary(t_end)
            tx0, _ = x0_eps(target(x_end, t_end, timestep_cond=w_emb, encoder_hidden_states=cond).sample,
                            x_end, t_end)
            target_pred = c_skip_e * x_end + c_out_e * tx0
        # 6. pseudo-Huber loss (c = 0.001, as in the LCM training script)
        return (torch.sqrt((model_pred - target_pred) ** 2 + 0.001**2) - 0.001).mean()

    @torch.no_grad()
    def ema() -> None:  # 7. EMA target
        for p_t, p_s in zip(target.parameters(), student.parameters()):
            p_t.lerp_(p_s, 1 - cfg.ema_decay)

    def eval_at(step: int) -> None:
        pipe = lcm_pipeline(tok, vae, te, target.eval())
        with torch.no_grad():
            res = evaluate(pipe, eval_prompts, [0], num_inference_steps=4, guidance_scale=5.0)
        save_grid(res.pop("images")[:32], cfg.work / f"lcm_{step}.png")
        log(f"lcm eval step {step} (4 steps, held-out): {_fmt(res)}")

    train_loop("lcd", cfg, step, cfg.lcd_steps, opt, lambda s: lr_at(s, cfg.lcd_steps, cfg.lcd_lr, 100), loss_fn,
               ck, dict(student=student, target=target, opt=opt), clip=list(student.parameters()),
               after_step=ema, evaluate=eval_at, loss_digits=5)
    lcm_pipeline(tok, vae, te, target).save_pretrained(out)


# ---------------------------------------------------------------- clip


def swapped_captions(scene: world.Scene) -> list[str]:
    """Attribute-swapped alternatives of a single-object scene's full caption (hard negatives)."""
    o = scene.objects[0]
    base = {"shape": o.shape, "color": o.color, "size": o.size}
    out = []
    for shape in world.SHAPES:
        if shape != o.shape:
            out.append({**base, "shape": shape})
    alts = []
    for obj in out:
        alts.append(world.Request((obj,), scene.bg_color, scene.bg_style))
    for c in world.COLORS:
        if c not in (o.color, scene.bg_color):
            alts.append(world.Request(({**base, "color": c},), scene.bg_color, scene.bg_style))
            alts.append(world.Request((base,), c, scene.bg_style))
    alts.append(world.Request(({**base, "color": scene.bg_color},), o.color, scene.bg_style))  # swap
    alts.append(world.Request(({**base, "size": "small" if o.size == "large" else "large"},),
                              scene.bg_color, scene.bg_style))
    return [world.caption_of(r) for r in alts]


def where(o: world.Obj) -> str:
    """Coarse position of an object: "top left", "centre", ..."""
    third = world.SIZE / 3
    v = "top" if o.cy < third else ("bottom" if o.cy > 2 * third else "")
    h = "left" if o.cx < third else ("right" if o.cx > 2 * third else "")
    return " ".join(w for w in (v, h) if w) or "centre"


def clip_caption(scene: world.Scene, full: str, short: str) -> str:
    """CLIP's training caption: the short or the full one, the full one sometimes with the object's position
    (the generator's grammar has no positions, but a reward model on CLIP features needs to see layout)."""
    if random.random() < 0.5:
        return short
    if len(scene.objects) == 1 and random.random() < 0.5:
        return f"{full} at the {where(scene.objects[0])}"
    return full


def stage_clip(cfg: BuildConfig) -> None:
    out = cfg.out / "toy-clip"
    if (out / "open_clip_model.safetensors").exists():
        return
    import open_clip
    from safetensors.torch import save_file

    name = models.register_clip_config(out)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(name)
    data = load_data(cfg)
    images = data["images"]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[None, :, None, None]
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)[None, :, None, None]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ck = Checkpoint(cfg.work / "clip.ckpt")
    step = ck.load(model=model, opt=opt)

    def loss_fn() -> torch.Tensor:
        idx = np.random.randint(0, len(images), cfg.clip_batch)
        x = (torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255 - mean) / std
        caps, negs = [], []
        for i in idx:
            sc = world.sample_scene(cfg.seed * 10_000_000 + int(i), "train")
            caps.append(clip_caption(sc, str(data["full"][i]), str(data["short"][i])))
            if len(sc.objects) == 1:
                negs.append(random.choice(swapped_captions(sc)))
        img_f = F.normalize(model.encode_image(x), dim=-1)
        txt_f = F.normalize(model.encode_text(tokenizer(caps + negs)), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T  # (B, B + negatives)
        labels = torch.arange(len(idx))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, : len(idx)].T, labels)) / 2

    @torch.no_grad()
    def clamp_scale() -> None:
        model.logit_scale.clamp_(0, math.log(100))

    train_loop("clip", cfg, step, cfg.clip_steps, opt, lambda s: lr_at(s, cfg.clip_steps, 1e-3, 100), loss_fn, ck,
               dict(model=model, opt=opt), after_step=clamp_scale)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    log(f"clip retrieval among swapped captions (held-out): {clip_retrieval(out):.3f}")


def clip_retrieval(model_dir: Path, n: int = 300) -> float:
    """Top-1 retrieval of the true caption among attribute-swapped ones, on held-out renders."""
    from rlcm.clip import load_clip

    clip = load_clip(model_dir)
    hits = 0
    for i in range(n):
        sc = world.sample_scene(900_000 + i, "heldout", two_object_prob=0.0)
        caps = [world.caption(sc, drop=False)] + swapped_captions(sc)
        scores = clip.score([world.render(sc)] * len(caps), caps)
        hits += int(scores.argmax().item() == 0)
    return hits / n


# ---------------------------------------------------------------- fp16 storage


def stage_shrink(cfg: BuildConfig) -> None:
    """UNet and CLIP weights to fp16 on disk (halves the repo size). VAE and text encoder stay fp32:
    they are small, and transformers would load an fp16 text encoder as fp16."""
    from safetensors.torch import load_file, save_file

    files = [cfg.out / m / "unet" / "diffusion_pytorch_model.safetensors" for m in ("toy-lcm", "toy-teacher")]
    files.append(cfg.out / "toy-clip" / "open_clip_model.safetensors")
    for f in files:
        sd = load_file(f)
        if all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point()):
            continue
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f, metadata={"format": "pt"})
        log(f"{f.relative_to(cfg.out)} -> fp16 ({f.stat().st_size / 1e6:.1f} MB)")


# ---------------------------------------------------------------- model card


def _weights_fingerprint(cfg: BuildConfig) -> str:
    """sha256 over the generators' weight files: the card's fidelity rows are reused only for the same weights."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((cfg.out / "toy-lcm").rglob("*.safetensors")) + sorted((cfg.out / "toy-teacher").rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_card(cfg: BuildConfig) -> None:
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    fingerprint = _weights_fingerprint(cfg)
    cached = json.loads((cfg.work / "card.json").read_text()) if (cfg.work / "card.json").exists() else {}
    if cached.get("fingerprint") == fingerprint and cached.get("prompts") == cfg.card_prompts:
        rows = [tuple(r) for r in cached["rows"]]
        log("generators unchanged since the last card: reusing their fidelity rows")
    else:
        rows = []
        lcm = LatentConsistencyModelPipeline.from_pretrained(cfg.out / "toy-lcm", local_files_only=True)
        teacher = StableDiffusionPipeline.from_pretrained(cfg.out / "toy-teacher", local_files_only=True)
        prompts = world.prompts("heldout", cfg.card_prompts, seed=2)
        torch.manual_seed(0)
        for label, pipe, kw in [
            ("LCM, 4 steps", lcm, dict(num_inference_steps=4, guidance_scale=8.0)),
            ("LCM, 2 steps", lcm, dict(num_inference_steps=2, guidance_scale=8.0)),
            ("LCM, 8 steps", lcm, dict(num_inference_steps=8, guidance_scale=8.0)),
            ("teacher, 50 DDIM steps (CFG 5)", teacher, dict(num_inference_steps=50, guidance_scale=5.0)),
        ]:
            t = time.time()
            with torch.no_grad():
                res = evaluate(pipe, prompts, [0, 1], **kw)
            imgs = res.pop("images")
            res["seconds_per_image"] = (time.time() - t) / len(imgs)
            rows.append((label, res))
            log(f"{label}: {_fmt(res)}")
            if label == "LCM, 4 steps":
                save_grid(imgs[:32], cfg.out / "lcm_4step_heldout.png")
                (cfg.out / "lcm_4step_heldout.txt").write_text("\n".join(prompts[:32]) + "\n")
    retrieval = clip_retrieval(cfg.out / "toy-clip")
    log(f"clip retrieval among swapped captions (held-out): {retrieval:.3f}")
    (cfg.work / "card.json").write_text(json.dumps({"rows": rows, "clip_retrieval": retrieval,
                                                    "fingerprint": fingerprint, "prompts": cfg.card_prompts},
                                                   indent=2))
    from .card import write_card

    write_card(cfg, rows, retrieval)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    p.add_argument("--out", type=Path, default=BuildConfig.out)
    p.add_argument("--work", type=Path, default=BuildConfig.work)
    p.add_argument("--teacher-steps", type=int, default=BuildConfig.teacher_steps)
    p.add_argument("--teacher-init", type=Path, default=None,
                   help="continue the teacher from this saved pipeline directory (fresh optimiser)")
    p.add_argument("--teacher-init-step", type=int, default=0, help="schedule step the --teacher-init weights are at")
    p.add_argument("--lcd-steps", type=int, default=BuildConfig.lcd_steps)
    p.add_argument("--clip-steps", type=int, default=BuildConfig.clip_steps)
    p.add_argument("--smoke", action="store_true", help="a few steps of every stage, to check the wiring")
    args = p.parse_args(argv)
    cfg = BuildConfig(out=args.out, work=args.work, teacher_steps=args.teacher_steps, lcd_steps=args.lcd_steps,
                      clip_steps=args.clip_steps, teacher_init=args.teacher_init,
                      teacher_init_step=args.teacher_init_step)
    if args.smoke:
        cfg = BuildConfig(out=args.out, work=args.work, n_scenes=300, vae_steps=3, teacher_steps=3, lcd_steps=3,
                          clip_steps=3, eval_every=2, card_prompts=8)
    cfg.work.mkdir(parents=True, exist_ok=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed), np.random.seed(cfg.seed), random.seed(cfg.seed)
    for name in args.stages:
        log(f"== stage {name}")
        globals()[f"stage_{name}"](cfg)
    log("done")


if __name__ == "__main__":
    main()
