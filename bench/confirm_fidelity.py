"""How far a round's own fidelity figure is from its fidelity on new prompts: why candidates are confirmed.

    python bench/confirm_fidelity.py DATA_DIR [ROUND_ID ...]     # default: every finished round

For each finished round of a studio's data directory (e.g. a `bench/live_loop.py --work-dir`), prints the toy
prompt-fidelity change against the base, in points, as the round measured it (its handed-over epoch on its own
32 evaluation images, the ones the keeper chose that epoch on), on the studio's confirmation set
(`studio.checks.confirmation_set(128)`: 256 images, the check a round now passes before a vote) and on 512
further held-out images (256 other prompts x 2 seeds), each paired with the base on the same prompts and seeds,
with its standard error. The rounds' LoRAs are loaded as a candidate of the studio's own generator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feedback.store import FeedbackStore  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from studio import checks  # noqa: E402
from studio.serving import BASE, ServedGenerator  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402


def main() -> None:
    data = Path(sys.argv[1])
    wanted = {int(a) for a in sys.argv[2:]}
    gen = ServedGenerator(StudioSettings(data_dir=data / "confirm-bench"))
    large = [p for p in get_prompts("toy", "heldout", 256, seed=11)[:256] for _ in (0, 1)]
    sets = {"confirmation_256": checks.confirmation_set(128), "large_512": (large, [40_000 + i for i in range(512)])}

    def scores(version, prompts, seeds):
        return checks.fidelity_scores(lambda p, sd: gen.generate(p, sd, version=version)[0], prompts, seeds)

    base = {k: scores(BASE, *v) for k, v in sets.items()}
    for r in FeedbackStore(data).rounds():
        if r["status"] != "done" or not r.get("lora_path") or (wanted and r["id"] not in wanted):
            continue
        m = r.get("metrics") or {}
        gen.set_candidate(f"round-{r['id']}", r["lora_path"])
        row = {"round": r["id"], "verdict": r.get("verdict"), "from": (r.get("config") or {}).get("init_version"),
               "in_round_points": (round(100 * (m["fidelity_after"] - m["fidelity_base"]), 1)
                                   if m.get("fidelity_base") is not None else None)}
        for k, (prompts, seeds) in sets.items():
            c = checks.fidelity_change(base[k], scores(f"round-{r['id']}", prompts, seeds), prompts)
            row[k] = f"{c['change_points']:+.1f} ± {c['se_points']:.1f}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
