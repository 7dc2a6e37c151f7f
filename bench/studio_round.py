"""The studio's live loop on the CPU: time to the next pair after a vote, and one default fine-tune round.

    python bench/studio_round.py --labels 60            # writes bench/RESULTS.md
    python bench/studio_round.py --labels 16 --quick    # wiring check

A simulated rater (warm colours by default) votes through `Studio.vote` exactly as the Rate tab does;
each vote is followed by `Studio.next_pair` (from the pre-generated queue), timed. Then one round with the
default settings (refit reward model + RLCM) runs to completion; reported: its wall-clock and the served
model's held-out reward under the fitted reward model before and after, and toy prompt fidelity.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from feedback.raters import load_rater  # noqa: E402
from results import results_path, update_section  # noqa: E402
from studio.runtime import Studio  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, default=60)
    p.add_argument("--oracle", default="feedback/raters.py:warm_colours")
    p.add_argument("--model", default="data/models/toy-lcm")
    p.add_argument("--clip", default="data/models/toy-clip")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    prefer = load_rater(args.oracle)
    kw = dict(round_epochs=2, round_prompts=2) if args.quick else {}
    s = StudioSettings(model=args.model, clip=args.clip, data_dir=Path(tempfile.mkdtemp(prefix="studio-bench-")),
                       admin_password="x", snapshot_every_s=0, **kw)
    studio = Studio(s)
    pair = studio.next_pair()  # warms up the pipeline
    while studio.queue.q.qsize() < s.queue_size:
        time.sleep(0.2)
    latencies = []
    token = None
    for _ in range(args.labels):
        choice = prefer(Image.open(pair["image_a"]), Image.open(pair["image_b"]), pair["prompt"])
        token = studio.vote(studio.rater("bench", token), pair["a"], pair["b"], choice, str(uuid.uuid4()))["rater_token"]
        t = time.perf_counter()
        pair = studio.next_pair()
        latencies.append(time.perf_counter() - t)
        time.sleep(0.3)  # a quick person: the queue refills between votes
    t0 = time.time()
    rid = studio.start_round(by="bench")
    while studio.rounds.running:
        time.sleep(0.5)
    seconds = time.time() - t0
    row = studio.store.get_round(rid)
    m = row["metrics"] or {}
    lat = np.array(latencies) * 1000
    num = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731  (absent when a round failed)
    md = "\n".join([
        f"Simulated rater `{args.oracle}`, {args.labels} votes through `Studio.vote`, each followed by "
        "`Studio.next_pair` (in-process, from the queue; the HTTP round trip is in the load benchmark).",
        "",
        "| figure | value |", "|---|---|",
        f"| next pair after a vote, p50 / p95 / max | {np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f} / "
        f"{lat.max():.1f} ms |",
        f"| default round ({s.round_epochs} RLCM epochs x {s.round_prompts * 4} samples, {s.steps} steps), wall-clock | "
        f"{seconds:.0f} s ({row['status']}) |",
        f"| reward-model held-out accuracy | {num((m.get('reward_model') or {}).get('accuracy'))} |",
        f"| served model's held-out reward (fitted reward model), before → after | "
        f"{num(m.get('reward_before'))} → {num(m.get('reward_after'))} |",
        f"| toy prompt fidelity before → after | {num(m.get('fidelity_before'), '.1%')} → "
        f"{num(m.get('fidelity_after'), '.1%')} |",
    ])
    print(md)
    update_section("Studio: next pair latency and one default round (CPU)", md, path=results_path(args.quick))
    studio.close()


if __name__ == "__main__":
    main()
