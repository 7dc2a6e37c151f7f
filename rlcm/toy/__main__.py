"""Toy-world CLI: `python -m rlcm.toy check --image X.png --prompt "..."` and `render`.

Examples:
  python -m rlcm.toy render --seed 3 --out scene.png      # prints the scene's caption
  python -m rlcm.toy check --image scene.png --prompt "a large red circle on a blue background"
"""

from __future__ import annotations

import argparse
import json
import sys

from PIL import Image

from . import world
from .checker import check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlcm.toy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="which of the prompt's attributes the image shows")
    c.add_argument("--image", required=True)
    c.add_argument("--prompt", required=True)
    r = sub.add_parser("render", help="render a random scene and print its caption")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--split", default="train", choices=["train", "heldout"])
    r.add_argument("--out", default="scene.png")
    args = p.parse_args(argv)
    if args.cmd == "render":
        sc = world.sample_scene(args.seed, args.split)
        world.render(sc).save(args.out)
        print(world.caption(sc, drop=False))
        return 0
    try:
        result = check(Image.open(args.image), args.prompt)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"score": result.score, "all_correct": result.all_correct, "results": result.results,
                      "found": result.found}, indent=2))
    return 0 if result.all_correct else 1


if __name__ == "__main__":
    sys.exit(main())
