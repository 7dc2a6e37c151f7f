"""Headless CLI: `python -m rlcm train ...` (RLCM / DDPO fine-tuning) and `python -m rlcm sample ...`.

Examples:
  python -m rlcm train --reward jpeg_compressibility --epochs 30 --output-dir runs/compress
  python -m rlcm train --preset paper_aesthetic --reward-kwargs '{"weights": "aesthetic.pth"}'
  python -m rlcm train --reward preference --reward-kwargs '{"model": "runs/live/reward_model"}'
  python -m rlcm sample --model data/models/toy-lcm --lora runs/compress/lora \
      --prompt "a red circle on a blue background" --steps 4 --seed 0 --out x.png
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import fields

from .trainer import PRESETS, RLCMConfig


def _add_config_args(p: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(RLCMConfig)
    for f in fields(RLCMConfig):
        flag = "--" + f.name.replace("_", "-")
        t = hints[f.name]
        if t is bool:
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        elif t is dict:
            p.add_argument(flag, type=json.loads, default=None, help="JSON object")
        elif t in (int, float, str):
            p.add_argument(flag, type=t, default=None)
        else:  # Optional[str]
            p.add_argument(flag, type=str, default=None)


def learned_reward(cfg: RLCMConfig):
    """The reward function for `cfg` when it names the learned `preference` reward with a model path, else None.

    The CLI wires the layers: `rlcm` itself takes learned rewards as functions and never imports `reward_model`.
    """
    from .rewards import get_reward, parse_reward

    model = cfg.reward_kwargs.get("model")
    if not isinstance(model, str) or "preference" not in [name for _, name in parse_reward(cfg.reward)]:
        return None
    import reward_model

    return get_reward(cfg.reward, **{**cfg.reward_kwargs, "model": reward_model.load(model).as_reward_fn()})


def cmd_train(args) -> None:
    from tqdm import tqdm

    from .plot import reward_curve
    from .trainer import RLCMTrainer, config_from_args

    overrides = {f.name: getattr(args, f.name) for f in fields(RLCMConfig) if getattr(args, f.name) is not None}
    cfg = config_from_args(args.preset, **overrides)
    bar = tqdm(total=cfg.epochs, desc="RLCM", unit="epoch")

    def on_event(e: dict) -> None:
        if e["type"] in ("epoch", "resumed"):
            bar.n = e["epoch"]
            shown = {k: round(e[k], 4) for k in ("reward_mean", "eval_reward_mean", "approx_kl") if k in e}
            bar.set_postfix(shown)
            bar.refresh()

    trainer = RLCMTrainer(cfg, reward_fn=learned_reward(cfg), callbacks=[on_event])
    history = trainer.train()
    bar.close()
    if trainer.accelerator.is_main_process:
        png = reward_curve(history, f"{cfg.output_dir}/reward_curve.png", f"{cfg.reward} ({cfg.model})")
        ev = [r for r in history if "eval_reward_mean" in r]
        if ev:
            print(f"held-out reward {ev[0]['eval_reward_mean']:.4f} -> {ev[-1]['eval_reward_mean']:.4f}"
                  + (f", fidelity {ev[0]['eval_fidelity']:.3f} -> {ev[-1]['eval_fidelity']:.3f}"
                     if "eval_fidelity" in ev[0] else ""))
        print(f"LoRA: {cfg.output_dir}/lora  log: {cfg.output_dir}/log.jsonl  curve: {png}")


def cmd_sample(args) -> None:
    import torch

    from .pipelines import load_pipeline

    pipe = load_pipeline(args.model, args.lcm_lora, args.device)
    if args.lora:
        pipe.load_lora_weights(args.lora, adapter_name="rl")
    gen = torch.Generator(pipe.device).manual_seed(args.seed)
    image = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gen,
                 height=args.height, width=args.width).images[0]
    image.save(args.out)
    print(args.out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rlcm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fine-tune with RLCM (or DDPO on a DDIM pipeline)")
    t.add_argument("--preset", default="toy", choices=sorted(PRESETS))
    _add_config_args(t)
    t.set_defaults(fn=cmd_train)
    s = sub.add_parser("sample", help="generate one image, optionally with a trained LoRA")
    s.add_argument("--model", default="data/models/toy-lcm")
    s.add_argument("--lcm-lora", default=None)
    s.add_argument("--lora", default=None, help="directory written by `train` (its lora/ folder)")
    s.add_argument("--prompt", required=True)
    s.add_argument("--steps", type=int, default=4)
    s.add_argument("--guidance", type=float, default=8.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--height", type=int, default=None)
    s.add_argument("--width", type=int, default=None)
    s.add_argument("--device", default=None)
    s.add_argument("--out", default="sample.png")
    s.set_defaults(fn=cmd_sample)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
