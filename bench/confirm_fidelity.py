"""How far a round's own fidelity figure is from its fidelity on new prompts: why candidates are confirmed.

    python bench/confirm_fidelity.py DATA_DIR [ROUND_ID ...]                 # default: every finished round
    python bench/confirm_fidelity.py DATA_DIR 1 --draws 1 2 3 --eval-prompts 465

For each finished round of a studio's data directory (e.g. a `bench/live_loop.py --work-dir`), prints the toy
prompt-fidelity change against the base, in points, as the round measured it (its handed-over epoch on its own
32 evaluation images, the ones the keeper chose that epoch on), on the first confirmation set
(`studio.checks.confirmation_set(128)`: 256 images) and on 512 further held-out images (256 other prompts x 2
seeds), each paired with the base on the same prompts and seeds, with its standard error (clustered by prompt,
`checks.fidelity_change`; records before 2026-11-28 treated the images as independent).

`--draws D ...` adds the studio's confirmation as a round now gets it (`confirm_prompts` prompts x 2 seeds of
draw D; a round's own draw is its id), each look's change and whether it settles or fails it. `--eval-prompts N`
adds the live loop's evaluation set (`live_loop.heldout_set(N, 0)`, N x 2 images: its `fidelity_change_points`).
Those sets also print the per-image standard error and the correlation of a prompt's two seeds' changes, what
the clustering accounts for. The rounds' LoRAs are loaded as a candidate of the studio's own generator.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feedback.store import FeedbackStore  # noqa: E402
from live_loop import heldout_set  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from studio import checks  # noqa: E402
from studio.serving import BASE, ServedGenerator  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402


def seed_details(base: np.ndarray, tuned: np.ndarray) -> dict:
    """Per-image standard error and the correlation of a prompt's two seeds (sets listing each prompt twice)."""
    d = 100 * (tuned - base)
    pairs = d.reshape(-1, 2)
    return {"per_image_se": round(float(d.std(ddof=1) / np.sqrt(len(d))), 2),
            "seed_correlation": round(float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("rounds", type=int, nargs="*", help="round ids (default: every finished round)")
    ap.add_argument("--draws", type=int, nargs="*", default=[], help="confirmation draws to score, as the studio")
    ap.add_argument("--eval-prompts", type=int, default=0, help="also the live loop's evaluation set of N prompts")
    args = ap.parse_args()
    settings = StudioSettings(data_dir=args.data_dir / "confirm-bench")
    gen = ServedGenerator(settings)
    large = [p for p in get_prompts("toy", "heldout", 256, seed=11)[:256] for _ in (0, 1)]
    sets = {"confirmation_256": checks.confirmation_set(128), "large_512": (large, [40_000 + i for i in range(512)])}
    studio_sets = {f"draw_{d}": checks.confirmation_set(settings.confirm_prompts, d) for d in args.draws}
    if args.eval_prompts:
        studio_sets["live_loop_eval"] = heldout_set(args.eval_prompts, 0)
    sets.update(studio_sets)

    def scores(version, prompts, seeds):
        return checks.fidelity_scores(lambda p, sd: gen.generate(p, sd, version=version)[0], prompts, seeds)

    base = {k: scores(BASE, *v) for k, v in sets.items()}
    for r in FeedbackStore(args.data_dir).rounds():
        if r["status"] != "done" or not r.get("lora_path") or (args.rounds and r["id"] not in args.rounds):
            continue
        m = r.get("metrics") or {}
        version = f"round-{r['id']}"
        gen.set_candidate(version, r["lora_path"])
        row = {"round": r["id"], "verdict": r.get("verdict"), "from": (r.get("config") or {}).get("init_version"),
               "in_round_points": (round(100 * (m["fidelity_after"] - m["fidelity_base"]), 1)
                                   if m.get("fidelity_base") is not None else None)}
        for k, (prompts, seeds) in sets.items():
            tuned = scores(version, prompts, seeds)
            c = checks.fidelity_change(base[k], tuned, prompts)
            row[k] = f"{c['change_points']:+.1f} ± {c['se_points']:.1f}"
            if k in studio_sets:
                row[k] = {"all": row[k], **seed_details(base[k], tuned)}
            if k.startswith("draw_"):  # each look as the studio's check takes it, up to the one that decides
                looks = checks.confirmation_changes(settings.confirm_prompts, prompts, lambda n: base[k][:n],
                                                    lambda n: tuned[:n])
                for c in looks:
                    row[k][f"look_{c['n']}"] = f"{c['change_points']:+.1f} ± {c['se_points']:.1f}" + (
                        " settled" if checks.confirm_settled(c) else "")
                row[k]["verdict"] = "fails" if checks.confirm_reason(looks[-1]) else "passes"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
