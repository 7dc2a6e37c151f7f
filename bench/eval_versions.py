"""Any versions of a finished live-loop studio against the base, under a rater, as the live loop measures
the served one (`live_loop.evaluate`: held-out prompts x 2 seeds, ties half, paired fidelity change).

    python bench/eval_versions.py runs/s39/h2-warm_colours warm_colours round-1 round-2 round-3 --eval-prompts 128
    python bench/eval_versions.py runs/s40/tp-big_centred big_centred runs/round_probe/NAME/round/lora  # a LoRA dir

A version is a version name of the studio or a LoRA directory in diffusers form (a round's `lora/`, a
round_probe's `round/lora`), served from the studio's generator. The studio directory is copied first:
activating a version there would change which one the run serves. Prints one JSON line per version; writes
nothing to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedback import load_rater  # noqa: E402
from live_loop import evaluate  # noqa: E402
from studio.runtime import Studio  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work_dir", type=Path, help="a live loop's --work-dir (the studio's data directory)")
    ap.add_argument("oracle", help="rater: file.py:function, module:function or a shipped name")
    ap.add_argument("versions", nargs="+", help="version names (e.g. round-2) or LoRA directories (diffusers form)")
    ap.add_argument("--eval-prompts", type=int, default=512, help="held-out prompts (each with 2 seeds)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    copy = Path(tempfile.mkdtemp(prefix="eval-versions-")) / "studio"
    shutil.copytree(args.work_dir, copy, ignore=shutil.ignore_patterns("images"))
    studio = Studio(StudioSettings(data_dir=copy, admin_password=uuid.uuid4().hex, snapshot_every_s=0),
                    start_workers=False)
    try:
        oracle = load_rater(args.oracle)
        for v in args.versions:
            if Path(v).is_dir():  # a LoRA directory, served under its path
                studio.generator.activate(v, v)
            else:
                studio.activate(v, by="bench")
            r = evaluate(studio, oracle, args.eval_prompts, args.seed)
            print(json.dumps({k: round(x, 4) if isinstance(x, float) else x for k, x in r.items()}), flush=True)
    finally:
        studio.close()
        shutil.rmtree(copy.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
