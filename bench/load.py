"""Serving under load: N concurrent simulated raters vote through gradio_client against a launched studio.

    python bench/load.py --raters 8 --votes 400          # real run (~1-2 min), writes bench/RESULTS.md
    OMP_NUM_THREADS=1 python bench/load.py --quick --model /tmp/bt/models/toy-lcm \
        --clip /tmp/bt/models/toy-clip                   # seconds; throw-away RESULTS.md

The app is launched as in tests/studio_fixtures.py (prevent_thread_lock, a fresh data directory) and
warmed up until its pair queue is full. Each rater thread has its own client and loops: /next_pair
(timed: the time to the next pair), a judgement by the warm-colours taste from the pair's image files,
/vote (timed), and for a fraction of votes a retried submission with the same client_id. After all raters
stop, a fresh connection to the database must hold exactly the acknowledged votes: one row per
acknowledged client_id, with the acknowledged row id, and nothing else.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from feedback import FeedbackStore  # noqa: E402
from feedback.raters import warm_colours  # noqa: E402
from results import results_path, update_section  # noqa: E402


def rater(client, name: str, studio, claim, out: dict, retry_fraction: float, seed: int) -> None:
    """One simulated rater: next pair, judge, vote (sometimes twice), until `claim()` says the votes are done."""
    rng = random.Random(seed)
    token = None  # the name's rater_token, handed back by its first vote
    while claim():
        try:
            t = time.perf_counter()
            p = client.predict(api_name="/next_pair")
            out["next_pair_s"].append(time.perf_counter() - t)
            a, b = (Image.open(studio.store.image_path(s)) for s in (p["a"], p["b"]))
            vote = (name, p["a"], p["b"], warm_colours(a, b, p["prompt"]), p["client_id"])
            t = time.perf_counter()
            ack = client.predict(*vote, token, api_name="/vote")
            token = ack["rater_token"]
            out["vote_s"].append(time.perf_counter() - t)
            out["acked"][p["client_id"]] = ack["id"]
            if rng.random() < retry_fraction:  # a retried submit must not count twice
                again = client.predict(*vote, token, api_name="/vote")
                out["retries"] += 1
                out["bad_retries"] += again["created"] or again["id"] != ack["id"]
        except Exception as e:  # counted, not fatal: the database check shows whether it mattered
            out["errors"].append(f"{type(e).__name__}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raters", type=int, default=8, help="concurrent simulated raters (threads, one client each)")
    ap.add_argument("--votes", type=int, default=400, help="votes to cast in all")
    ap.add_argument("--retry-fraction", type=float, default=0.1, help="votes resubmitted with the same client_id")
    ap.add_argument("--queue-size", type=int, default=6, help="pre-generated pairs (StudioSettings.queue_size)")
    ap.add_argument("--model", default="data/models/toy-lcm")
    ap.add_argument("--teacher", default="data/models/toy-teacher", help="unused here; accepted like every bench script")
    ap.add_argument("--clip", default="data/models/toy-clip")
    ap.add_argument("--quick", action="store_true", help="seconds: 2 raters, 10 votes; no bench/RESULTS.md")
    args = ap.parse_args()
    if args.quick:
        args.raters, args.votes, args.retry_fraction = 2, 10, 0.5
    from diffusers.utils import logging as diffusers_logging
    from gradio_client import Client
    from transformers.utils import logging as transformers_logging

    from app import build_app, launch_kwargs
    from studio.runtime import Studio
    from studio.settings import StudioSettings

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    settings = StudioSettings(model=args.model, clip=args.clip, data_dir=data_dir,
                              admin_password=secrets.token_urlsafe(9), queue_size=args.queue_size, snapshot_every_s=0)
    t = time.perf_counter()
    studio = Studio(settings)
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=8).launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(studio.settings))
    while studio.queue.q.qsize() < args.queue_size and time.perf_counter() - t < 120:
        time.sleep(0.2)
    print(f"app up at {demo.local_url}, queue {studio.queue.q.qsize()}/{args.queue_size} "
          f"after {time.perf_counter() - t:.1f}s", flush=True)

    lock, left = threading.Lock(), [args.votes]

    def claim() -> bool:
        with lock:
            left[0] -= 1
            return left[0] >= 0

    outs = [{"next_pair_s": [], "vote_s": [], "acked": {}, "errors": [], "retries": 0, "bad_retries": 0}
            for _ in range(args.raters)]
    clients = [Client(demo.local_url, verbose=False) for _ in range(args.raters)]
    threads = [threading.Thread(target=rater, args=(clients[i], f"load-{i}", studio, claim, outs[i],
                                                    args.retry_fraction, i)) for i in range(args.raters)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    studio.close()
    demo.close()

    acked = {cid: rid for o in outs for cid, rid in o["acked"].items()}
    rows = [r for r in FeedbackStore(data_dir).comparisons(include_skips=True) if r["rater"].startswith("load-")]
    stored = {r["client_id"]: r["id"] for r in rows}
    exact = len(rows) == len(stored) == len(acked) and stored == acked
    nxt = 1000 * np.array([x for o in outs for x in o["next_pair_s"]])
    vote = 1000 * np.array([x for o in outs for x in o["vote_s"]])
    errors = [e for o in outs for e in o["errors"]]
    retries, bad = sum(o["retries"] for o in outs), sum(o["bad_retries"] for o in outs)
    md = (f"{args.raters} concurrent raters (threads, one gradio_client each) against the app launched in-process "
          f"(queue of {args.queue_size} pre-generated pairs, concurrency limit 8, {Path(args.model).name} at {settings.steps} steps), "
          f"{args.votes} votes.\n\n| figure | value |\n|---|---|\n"
          f"| votes acknowledged | {len(acked)} in {wall:.1f}s |\n"
          f"| votes/s | {len(acked) / wall:.1f} |\n"
          f"| /next_pair latency p50 / p95 (ms) | {np.percentile(nxt, 50):.0f} / {np.percentile(nxt, 95):.0f} |\n"
          f"| /vote latency p50 / p95 (ms) | {np.percentile(vote, 50):.0f} / {np.percentile(vote, 95):.0f} |\n"
          f"| retried submissions (same client_id) / counted twice | {retries} / {bad} |\n"
          f"| errors | {len(errors)}{': ' + errors[0] if errors else ''} |\n"
          f"| database holds exactly the acknowledged votes | {'yes' if exact else 'NO'} "
          f"({len(rows)} rows, {len(stored)} client ids, {len(acked)} acknowledged) |\n")
    print("\n" + md)
    path = update_section(f"Serving under load: {args.raters} raters", md, results_path(args.quick))
    print(f"wrote {path}")
    if not exact or bad:
        sys.exit("FAIL: the database does not hold exactly the acknowledged votes")


if __name__ == "__main__":
    main()
