"""The studio's own loop with a simulated rater at a human pace: does what people see learn their taste?

    python bench/live_loop.py --oracle feedback/raters.py:warm_colours --labels 100 --pace 2 --minutes 20
    python bench/live_loop.py --oracle my_taste.py:prefer --labels 300 --work-dir runs/live   # any rater file
    python bench/live_loop.py --quick --oracle warm_colours      # a minute; throw-away RESULTS.md

It runs `studio.runtime.Studio` in-process with the app's default settings (auto rounds, the reward-model
check, the pair queue, the A/B gate, the alignment guard); only the data directory and admin password are
set. The rater (`prefer(image_a, image_b, prompt) -> "a" | "b" | "tie"`, a `file.py:function`,
`module:function` or shipped rater name) votes through `Studio.next_pair` / `Studio.vote`, the methods the
Rate tab calls, one label every `--pace` seconds of wall clock, A/B pairs included. It stops when the labels
are spent and no round is running, or after `--minutes`.

Then, on held-out prompts x 2 seeds (same seeds for both): the oracle's win rate of the *served* version
over the base (ties count half, sides alternate), the toy checker's prompt fidelity of both, and the reward
model's accuracy under the oracle on base pairs of those prompts. The LAST line printed is the JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from feedback import load_rater  # noqa: E402
from feedback.pairs import LABEL  # noqa: E402
from results import results_path, update_section  # noqa: E402
from rlcm.prompts import get_prompts  # noqa: E402
from rlcm.toy.checker import fidelity  # noqa: E402
from studio import gate  # noqa: E402
from studio.runtime import Studio  # noqa: E402
from studio.serving import BASE  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402


def rate(studio: Studio, oracle, labels: int, pace: float, deadline: float, log) -> dict:
    """Vote like a person at the Rate tab until the labels are spent (and no round runs) or the deadline."""
    spent = ab = 0
    token = None
    latency = []
    next_at = time.time()
    while time.time() < deadline:
        if spent < labels:
            time.sleep(max(0.0, next_at - time.time()))
            next_at += pace
            t = time.perf_counter()
            p = studio.next_pair()
            latency.append(time.perf_counter() - t)
            a, b = Image.open(p["image_a"]).convert("RGB"), Image.open(p["image_b"]).convert("RGB")
            gens = {studio.store.get_sample(p[k])["generator"] for k in ("a", "b")}
            cand = studio.generator.candidate
            row = studio.vote(studio.rater("oracle", token), p["a"], p["b"], oracle(a, b, p["prompt"]), str(uuid.uuid4()))
            token = row["rater_token"]  # kept like the browser keeps it
            spent += 1
            ab += bool(cand and cand in gens)
            if spent % 10 == 0:
                log(f"{spent} labels ({ab} A/B), serving {studio.generator.version}, candidate {cand}, "
                    f"round {studio.rounds.snapshot().get('state')}")
        elif studio.rounds.running or any(t.name == "auto-round" for t in threading.enumerate()):
            time.sleep(1.0)
        else:
            break
    return {"labels": spent, "gate_labels": ab, "next_pair_ms_p50": 1000 * float(np.median(latency)) if latency else None,
            "next_pair_ms_p95": 1000 * float(np.percentile(latency, 95)) if latency else None}


def evaluate(studio: Studio, oracle, n_prompts: int, seed: int) -> dict:
    """Served vs base on held-out prompts x 2 seeds, the same seeds for both."""
    served = studio.generator.version
    prompts = [p for p in get_prompts("toy", "heldout", n_prompts, seed=seed + 1)[:n_prompts] for _ in (0, 1)]
    seeds = [20_000 + i for i in range(len(prompts))]
    base = studio.generator.generate(prompts, seeds, version=BASE)[0]
    tuned = studio.generator.generate(prompts, seeds, version=served)[0]
    wins = [LABEL[oracle(f, b, p)] if i % 2 == 0 else 1.0 - LABEL[oracle(b, f, p)]
            for i, (b, f, p) in enumerate(zip(base, tuned, prompts))]
    rec = gate.Record(sum(w == 1.0 for w in wins), sum(w == 0.0 for w in wins), sum(w == 0.5 for w in wins))
    out = {"served_version": served, "served_win_rate": float(np.mean(wins)), "served_win_rate_n": len(wins),
           "served_win_rate_interval90": rec.interval(0.9)}
    fb, ft = fidelity(base, prompts)["score"], fidelity(tuned, prompts)["score"]
    out.update(fidelity_base=fb, fidelity_served=ft, fidelity_change_points=100 * (ft - fb))
    rm = studio.rounds.reward_model
    if rm is not None:  # its accuracy under the oracle on base pairs of prompts it never saw
        pairs = [(base[i], base[i + 1], prompts[i]) for i in range(0, len(base), 2)]
        truth = [oracle(a, b, p) for a, b, p in pairs]
        r = rm.score([im for a, b, _ in pairs for im in (a, b)], [p for _, _, p in pairs for _ in (0, 1)])
        hits = [(c == "a") == bool(r[2 * i] > r[2 * i + 1]) for i, c in enumerate(truth) if c != "tie"]
        out.update(rm_accuracy_heldout_prompts=float(np.mean(hits)) if hits else None,
                   rm_accuracy_heldout_prompts_n=len(hits))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oracle", required=True, help="rater: file.py:function, module:function or a shipped name")
    ap.add_argument("--labels", type=int, default=100, help="labels in all, A/B votes included")
    ap.add_argument("--pace", type=float, default=2.0, help="seconds between labels")
    ap.add_argument("--minutes", type=float, default=30.0, help="stop after this long in any case")
    ap.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts, 2 seeds each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", default=None, help="the studio's data directory (default: temp)")
    ap.add_argument("--quick", action="store_true", help="a minute: 20 labels at pace 0, short rounds; no RESULTS")
    args = ap.parse_args()
    oracle = load_rater(args.oracle)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="live-loop-"))
    overrides = dict(auto_round_every=10, round_epochs=2, round_prompts=2, compare_prompts=2) if args.quick else {}
    settings = StudioSettings(data_dir=work, admin_password=uuid.uuid4().hex, snapshot_every_s=0, **overrides)
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)  # noqa: E731
    studio = Studio(settings)
    try:
        labels = 20 if args.quick else args.labels
        pace = 0.0 if args.quick else args.pace
        voted = rate(studio, oracle, labels, pace, t0 + 60 * args.minutes, log)
        wall = time.time() - t0
        log(f"rating done: {voted}")
        studio.rounds.cancel()
        rounds = [r for r in studio.store.rounds() if r["status"] in ("running", "done", "failed", "cancelled")]
        report = {"oracle": args.oracle, "labels": voted["labels"], "pace_s": pace, "gate_labels": voted["gate_labels"],
                  "rounds_started": len(rounds),
                  "rounds_promoted": sum(r.get("verdict") == "promoted" for r in rounds),
                  "rounds_rejected": sum(r.get("verdict") == "rejected" for r in rounds),
                  "round_verdicts": [f"round-{r['id']}: {r['status']}/{r.get('verdict')}: {r.get('verdict_reason')}"
                                     for r in rounds],
                  "auto_note": studio.auto_note, "wall_s": wall,
                  "next_pair_ms_p50": voted["next_pair_ms_p50"], "next_pair_ms_p95": voted["next_pair_ms_p95"]}
        rm = studio.rounds.reward_model
        if rm is not None:
            report.update(rm_accuracy=rm.metrics.get("accuracy"), rm_accuracy_n=rm.metrics.get("accuracy_n"),
                          rm_accuracy_ci=rm.metrics.get("accuracy_ci"))
        report.update(evaluate(studio, oracle, 2 if args.quick else args.eval_prompts, args.seed))
    finally:
        studio.close()
    report = {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}
    print(json.dumps(report, indent=1))
    name = (Path(args.oracle.split(":")[0]).stem + ":" + args.oracle.split(":")[-1]) if ":" in args.oracle else args.oracle
    lo, hi = report["served_win_rate_interval90"]
    md = (f"`studio.runtime.Studio` with the app's defaults (auto round every {settings.auto_round_every} labels, "
          f"{settings.round_epochs} epochs, guard {settings.alignment_guard:g}, A/B share {settings.ab_fraction:g}); "
          f"oracle `{args.oracle}` votes through `Studio.next_pair`/`Studio.vote` every {pace:g} s.\n\n"
          "| figure | value |\n|---|---|\n"
          f"| labels (of them A/B) | {report['labels']} ({report['gate_labels']}) |\n"
          f"| rounds started / promoted / rejected | {report['rounds_started']} / {report['rounds_promoted']} / "
          f"{report['rounds_rejected']} |\n"
          f"| served version | {report['served_version']} |\n"
          f"| oracle win rate, served over base (n={report['served_win_rate_n']}, ties half; 90% interval) | "
          f"{report['served_win_rate']:.3f} ({lo:.2f}–{hi:.2f}) |\n"
          f"| prompt fidelity base -> served | {100 * report['fidelity_base']:.1f}% -> "
          f"{100 * report['fidelity_served']:.1f}% ({report['fidelity_change_points']:+.1f} points) |\n"
          + (f"| reward model: own held-out accuracy (n={report.get('rm_accuracy_n')}) | "
             f"{report.get('rm_accuracy') or 0:.3f} |\n"
             f"| reward model: accuracy on held-out prompts (n={report.get('rm_accuracy_heldout_prompts_n')}, "
             f"oracle ties excluded) | {report.get('rm_accuracy_heldout_prompts') or 0:.3f} |\n" if rm is not None else "")
          + f"| next pair after a vote, p50 / p95 (in-process) | {report['next_pair_ms_p50']:.1f} / "
          f"{report['next_pair_ms_p95']:.1f} ms |\n| wall clock | {report['wall_s'] / 60:.1f} min |\n\n"
          "Rounds: " + "; ".join(report["round_verdicts"] or ["none"]))
    path = update_section(f"Live loop (studio): {name}, {report['labels']} labels, pace {pace:g} s", md,
                          results_path(args.quick))
    print(f"wrote {path}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
