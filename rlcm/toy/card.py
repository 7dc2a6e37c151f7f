"""Write data/models/README.md, the model card of the embedded toy models, from its stored inputs and notes.

The card is generated, never edited: `card.json` beside it holds what the build measured (config, fidelity
rows, CLIP retrieval, stage minutes, date) and `NOTES.md` the hand-written history the generator includes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

INPUTS = "card.json"  # beside README.md
NOTES = "NOTES.md"


def stage_minutes(log_path) -> dict[str, float]:
    """Wall-clock minutes of each build stage, from the `[HH:MM:SS] == stage NAME` lines of build.log."""
    import re
    from pathlib import Path

    path = Path(log_path)
    if not path.exists():
        return {}
    marks = []
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"\[(\d\d):(\d\d):(\d\d)\] (== stage (\w+)|done)", line)
        if m:
            h, mi, se = map(int, m.groups()[:3])
            marks.append((m.group(5) or "done", h * 3600 + mi * 60 + se))
    out: dict[str, float] = {}
    for (name, t), (_, t_next) in zip(marks, marks[1:]):
        if name != "done":  # the gap after a finished run is idle time, not a stage
            out[name] = out.get(name, 0.0) + ((t_next - t) % 86400) / 60
    return out


def write_card(cfg, rows: list[tuple[str, dict]], retrieval: float) -> None:
    """Store the card's inputs (`card.json`) and write README.md from them and `NOTES.md` (if present)."""
    inputs = {"date": time.strftime("%Y-%m-%d"),
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
              "rows": [[label, r] for label, r in rows], "clip_retrieval": retrieval,
              "stage_minutes": stage_minutes(Path(cfg.work) / "build.log")}
    out = Path(cfg.out)
    (out / INPUTS).write_text(json.dumps(inputs, indent=2) + "\n")
    (out / "README.md").write_text(card_text(inputs, _notes(out)))


def _notes(out: Path) -> str:
    path = out / NOTES
    return path.read_text() if path.exists() else ""


def regenerate(out: Path) -> str:
    """The card text from the stored `card.json` and `NOTES.md` of a model directory (no evaluation)."""
    return card_text(json.loads((out / INPUTS).read_text()), _notes(out))


def card_text(inputs: dict, notes: str = "") -> str:
    """The model card: pure function of the stored inputs and the hand-written notes."""
    from .models import CLIP_CONFIG

    cfg = SimpleNamespace(**inputs["config"])
    rows, retrieval, minutes = inputs["rows"], inputs["clip_retrieval"], inputs["stage_minutes"]
    vis, txt = CLIP_CONFIG["vision_cfg"], CLIP_CONFIG["text_cfg"]
    lines = [
        "# Embedded toy-world models",
        "",
        f"Built by `python -m rlcm.toy.build` on {inputs['date']} (2-core CPU, no GPU).",
        "Everything here is trained from scratch by the project's own scripts on the procedural toy world",
        "(`rlcm/toy/world.py`); nothing is downloaded.",
        "",
        "| directory | what | loads with |",
        "|---|---|---|",
        "| `toy-lcm` | latent consistency model (LCMScheduler, w-embedding via `time_cond_proj_dim`) | "
        "`LatentConsistencyModelPipeline.from_pretrained(path, local_files_only=True)` |",
        "| `toy-teacher` | latent diffusion teacher (DDIMScheduler) | "
        "`StableDiffusionPipeline.from_pretrained(path, local_files_only=True)` |",
        "| `toy-clip` | tiny open_clip (custom config `toy-clip.json`) | `rlcm.clip.load_clip(path)` |",
        "",
        "## How they were trained",
        f"- scenes: {cfg.n_scenes} renders of 64x64 px with full and shortened captions; ~15% of "
        "(object colour, shape, background colour) triples are held out of training",
        f"- VAE: AutoencoderKL 32/64/64 channels, 4x16x16 latents, {cfg.vae_steps} steps on 32x32 crops, L1+L2",
        f"- teacher: UNet2DConditionModel 48/96/96 with cross-attention at every level and a pooled-text "
        f"embedding, 3-layer CLIP text encoder (word-level tokenizer) trained jointly; eps-prediction, "
        f"min-SNR-{cfg.min_snr_gamma:g}, {cfg.cond_dropout:.0%} empty prompts, {cfg.teacher_steps} steps at batch "
        f"{cfg.teacher_batch}, lr {cfg.teacher_lr:g} cosine" + (
            f" (continued from `{cfg.teacher_init}` at step {cfg.teacher_init_step} with a fresh optimiser and a "
            "200-step re-warmup: `--teacher-init`)" if cfg.teacher_init else ""),
        f"- LCM: latent consistency distillation from the teacher (DDIM solver over {cfg.ddim_steps} steps, "
        f"guidance w ~ U[{cfg.w_min:g}, {cfg.w_max:g}] embedded with `time_cond_proj_dim={cfg.time_cond_proj_dim}`, "
        f"EMA target {cfg.ema_decay}, pseudo-Huber loss), {cfg.lcd_steps} steps at batch {cfg.lcd_batch}",
        f"- CLIP: ModifiedResNet image tower (width {vis['width']}, layers {vis['layers']}), text transformer "
        f"{txt['layers']}x{txt['width']}, {CLIP_CONFIG['embed_dim']}-d embeddings; contrastive with an "
        f"attribute-swapped hard negative per single-object scene, captions short / full / full + position, "
        f"{cfg.clip_steps} steps at batch {cfg.clip_batch}",
        "",
        f"Wall-clock per stage on this 2-core CPU, summed over every run of it (from {cfg.work}/build.log): "
        + (", ".join(f"{k} {v:.0f} min" for k, v in minutes.items()) or "not recorded") + ".",
        "",
        f"## Prompt fidelity on {cfg.card_prompts} held-out prompts x 2 seeds (toy checker)",
        "",
        "| sampler | background colour | object colour | shape | size | all correct | s / image (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        f = lambda k: f"{100 * r[k]:.1f}%" if k in r else "-"
        lines.append(f"| {label} | {f('bg_color')} | {f('color')} | {f('shape')} | {f('size')} | "
                     f"{f('all_correct')} | {r['seconds_per_image']:.3f} |")
    lines += [
        "",
        f"Toy CLIP: the true caption ranks first among attribute-swapped captions on {100 * retrieval:.1f}% "
        "of held-out renders.",
        "",
        "LCM, 4 steps, guidance 8, first 32 held-out prompts (`lcm_4step_heldout.txt`):",
        "",
        "![samples](lcm_4step_heldout.png)",
        "",
    ]
    if notes.strip():
        lines += ["## Notes (hand-written, `NOTES.md`)", "", notes.strip(), ""]
    return "\n".join(lines)
