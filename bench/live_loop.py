"""The studio's own loop with a simulated rater at a human pace: does what people see learn their taste?

    python bench/live_loop.py --oracle feedback/raters.py:warm_colours --labels 100 --pace 2 --minutes 20
    python bench/live_loop.py --oracle my_taste.py:prefer --labels 300 --work-dir runs/live   # any rater file
    python bench/live_loop.py --quick --oracle warm_colours      # a minute; throw-away RESULTS.md

It runs `studio.runtime.Studio` in-process with the app's default settings (auto rounds, the reward-model
check, the pair queue, the A/B gate, the alignment guard); only the data directory and admin password are
set. The rater (`prefer(image_a, image_b, prompt) -> "a" | "b" | "tie"`, a `file.py:function`,
`module:function` or shipped rater name) votes through `Studio.next_pair` / `Studio.vote`, the methods the
Rate tab calls, one label every `--pace` seconds of wall clock, A/B pairs included. It stops when the labels
are spent and no round is running (a round trained ahead that waits for votes on its parent does not
count: no more votes come), or after `--minutes`.

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
from studio import checks, gate  # noqa: E402
from studio.rounds import round_epochs  # noqa: E402
from studio.runtime import Studio  # noqa: E402
from studio.serving import BASE  # noqa: E402
from studio.settings import RANGES, StudioSettings, coerce, text_choices  # noqa: E402


def rate(studio: Studio, oracle, labels: int, pace: float, deadline: float, log, report_at=()) -> dict:
    """Vote like a person at the Rate tab until the labels are spent (and no round runs) or the deadline.

    At each label count in `report_at`, note what a run that stopped there would serve: its served version,
    rounds and reward model (a round still training then could not be promoted without more votes)."""
    spent = ab = 0
    token = None
    latency = []
    at: dict[int, dict] = {}
    served_at: dict[str, int] = {}  # version -> labels spent when it was first served (the gate decides inside a vote)
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
            if studio.generator.version != BASE:
                served_at.setdefault(studio.generator.version, spent)
            if spent in report_at:
                at[spent] = {"labels": spent, "gate_labels": ab, "served_version": studio.generator.version,
                             "served_at_labels": dict(served_at),
                             "reward_model": studio.rounds.reward_model, **round_counts(studio)}
            if spent % 10 == 0:
                log(f"{spent} labels ({ab} A/B), serving {studio.generator.version}, candidate {cand}, "
                    f"round {studio.rounds.snapshot().get('state')}")
        elif ((studio.rounds.running or any(t.name == "auto-round" for t in threading.enumerate()))
              and not studio.rounds.snapshot().get("waiting_on")):
            time.sleep(1.0)  # a round trained ahead that waits for votes on its parent gets none once labels are spent
        else:
            break
    return {"labels": spent, "gate_labels": ab, "at": at, "served_at_labels": served_at,
            "next_pair_ms_p50": 1000 * float(np.median(latency)) if latency else None,
            "next_pair_ms_p95": 1000 * float(np.percentile(latency, 95)) if latency else None}


def oracle_wins(oracle, base: list, tuned: list, prompts: list[str]) -> list[float]:
    """Per image pair: 1 when the oracle prefers the tuned image, 0 the base one, 1/2 a tie (sides alternate)."""
    return [LABEL[oracle(f, b, p)] if i % 2 == 0 else 1.0 - LABEL[oracle(b, f, p)]
            for i, (b, f, p) in enumerate(zip(base, tuned, prompts))]


def heldout_set(n_prompts: int, seed: int) -> tuple[list[str], list[int]]:
    """The evaluation's held-out prompts (each twice) and their seeds, the same for every version."""
    prompts = [p for p in get_prompts("toy", "heldout", n_prompts, seed=seed + 1)[:n_prompts] for _ in (0, 1)]
    return prompts, [20_000 + i for i in range(len(prompts))]


def evaluate(studio: Studio, oracle, n_prompts: int, seed: int, rm=None) -> dict:
    """Served vs base on held-out prompts x 2 seeds, the same seeds for both."""
    served = studio.generator.version
    prompts, seeds = heldout_set(n_prompts, seed)
    base = studio.generator.generate(prompts, seeds, version=BASE)[0]
    tuned = studio.generator.generate(prompts, seeds, version=served)[0]
    wins = oracle_wins(oracle, base, tuned, prompts)
    rec = gate.Record.from_scores(wins)
    out = {"served_version": served, "served_win_rate": float(np.mean(wins)), "served_win_rate_n": len(wins),
           "served_win_rate_interval90": rec.interval(0.9)}
    taste = getattr(oracle, "taste", None)  # a noisy rater's own taste (feedback.raters.noisy): what it means
    if taste is not None:
        out["served_win_rate_taste"] = float(np.mean(oracle_wins(taste, base, tuned, prompts)))
    fb, ft = checks.image_fidelity(base, prompts), checks.image_fidelity(tuned, prompts)
    change = checks.fidelity_change(fb, ft, prompts)  # paired: the same prompts and seeds
    out.update(fidelity_base=float(fb.mean()), fidelity_served=float(ft.mean()),
               fidelity_change_points=change["change_points"], fidelity_change_se_points=change["se_points"])
    if rm is not None:  # the reward model's accuracy under the oracle on base pairs of prompts it never saw
        pairs = [(base[i], base[i + 1], prompts[i]) for i in range(0, len(base), 2)]
        truth = [oracle(a, b, p) for a, b, p in pairs]
        r = rm.score([im for a, b, _ in pairs for im in (a, b)], [p for _, _, p in pairs for _ in (0, 1)])
        hits = [(c == "a") == bool(r[2 * i] > r[2 * i + 1]) for i, c in enumerate(truth) if c != "tie"]
        out.update(rm_accuracy_heldout_prompts=float(np.mean(hits)) if hits else None,
                   rm_accuracy_heldout_prompts_n=len(hits))
    return out


def round_counts(studio: Studio) -> dict:
    rounds = [r for r in studio.store.rounds() if r["status"] in ("running", "done", "failed", "cancelled")]
    # a round that failed a look on trial goes on at an earlier epoch as a new version, not a new round trained
    step_backs = sum("step_back_of" in (r.get("config") or {}) for r in rounds)
    return {"rounds_started": len(rounds) - step_backs, "step_backs_on_trial": step_backs,
            "rounds_promoted": sum(r.get("verdict") == "promoted" for r in rounds),
            "rounds_rejected": sum(r.get("verdict") == "rejected" for r in rounds),
            "round_verdicts": [f"round-{r['id']}: {r['status']}/{r.get('verdict') or 'no verdict yet'}"
                               + (f": {r['verdict_reason']}" if r.get("verdict_reason") else "") for r in rounds],
            # where each round's time went (fit, pair queue, training, waiting for votes, checks), in seconds
            "round_stage_seconds": {f"round-{r['id']}": (r.get("metrics") or {}).get("stage_seconds")
                                    for r in rounds}}


def section(report: dict, settings: StudioSettings, oracle: str, note: str = "") -> str:
    lo, hi = report["served_win_rate_interval90"]
    rm = report.get("rm_accuracy_heldout_prompts_n") is not None
    return (f"`studio.runtime.Studio` with the app's defaults (first automatic round at {settings.auto_round_first} "
            f"labels, then every {settings.auto_round_every}; {round_epochs(settings)} epochs from the base, "
            f"{settings.round_epochs} from an earlier round, guard {settings.alignment_guard:g}, "
            f"A/B share {settings.ab_fraction:g}); "
            f"oracle `{oracle}` votes through `Studio.next_pair`/`Studio.vote` every {report['pace_s']:g} s.{note}\n\n"
            "| figure | value |\n|---|---|\n"
            f"| labels (of them A/B) | {report['labels']} ({report['gate_labels']}) |\n"
            f"| rounds started / promoted / rejected | {report['rounds_started']}"
            + (f" (+{report['step_backs_on_trial']} stepped back)" if report.get("step_backs_on_trial") else "")
            + f" / {report['rounds_promoted']} / "
            f"{report['rounds_rejected']} |\n"
            f"| served version | {report['served_version']} |\n"
            + (f"| first served at label | "
               f"{', '.join(f'{v} at {n}' for v, n in report['served_at_labels'].items())} |\n"
               if report.get("served_at_labels") else "")
            + f"| oracle win rate, served over base (n={report['served_win_rate_n']}, ties half; 90% interval) | "
            f"{report['served_win_rate']:.3f} ({lo:.2f}–{hi:.2f}){_taste(report)} |\n"
            f"| prompt fidelity base -> served | {100 * report['fidelity_base']:.1f}% -> "
            f"{100 * report['fidelity_served']:.1f}% ({_change(report)} points) |\n"
            + (f"| reward model: own cross-validated accuracy (n={report.get('rm_accuracy_n')}) | "
               f"{report.get('rm_accuracy') or 0:.3f} |\n"
               f"| reward model: accuracy on held-out prompts (n={report.get('rm_accuracy_heldout_prompts_n')}, "
               f"oracle ties excluded) | {report.get('rm_accuracy_heldout_prompts') or 0:.3f} |\n" if rm else "")
            + (f"| next pair after a vote, p50 / p95 (in-process) | {report['next_pair_ms_p50']:.1f} / "
               f"{report['next_pair_ms_p95']:.1f} ms |\n" if report.get("next_pair_ms_p50") is not None else "")
            + (f"| wall clock | {report['wall_s'] / 60:.1f} min |\n" if report.get("wall_s") else "")
            + "\nRounds: " + "; ".join(report["round_verdicts"] or ["none"]))


def _taste(report: dict) -> str:
    """A noisy rater's win rate under its noiseless taste, where the report has it."""
    t = report.get("served_win_rate_taste")
    return "" if t is None else f"; noiseless taste {t:.3f}"


def _change(report: dict) -> str:
    """The fidelity change in points, with its paired standard error where the report has one."""
    se = report.get("fidelity_change_se_points")
    return f"{report['fidelity_change_points']:+.1f}" + (f" ± {se:.1f}" if se is not None else "")


LEARNABLE = {"warm_colours", "big_centred", "noisy_warm_colours", "noisy_big_centred"}
TARGET = {100: 0.80, 300: 0.90}  # the learnable tastes' served win rate at this many labels


def table(reports: list[dict]) -> str:
    """One row per (rater, labels) report, checked against the targets: never worse (the 90% interval of the
    win rate reaches 0.5 and fidelity is within 2 points) and, for learnable tastes, the win-rate target."""
    rows = ["| rater | labels (A/B) | rounds started / promoted / rejected | served | win rate (90% interval), n "
            "| fidelity change | reward model CV accuracy (n) | never worse | target |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(reports, key=lambda r: (r["oracle"], r["labels"])):
        lo, hi = r["served_win_rate_interval90"]
        never_worse = hi >= 0.5 and r["fidelity_change_points"] >= -2.0
        goal = TARGET.get(r["labels"]) if r["oracle"] in LEARNABLE else None
        met = "–" if goal is None else f"{'met' if r['served_win_rate'] >= goal else 'missed'} (>= {goal:.2f})"
        rm = (f"{r['rm_accuracy']:.3f} ({r['rm_accuracy_n']})" if r.get("rm_accuracy") is not None else "none")
        back = f" (+{r['step_backs_on_trial']} stepped back)" if r.get("step_backs_on_trial") else ""
        rows.append(f"| {r['oracle']} | {r['labels']} ({r['gate_labels']}) | {r['rounds_started']}{back} / "
                    f"{r['rounds_promoted']} / {r['rounds_rejected']} | {r['served_version']} | "
                    f"{r['served_win_rate']:.3f} ({lo:.2f}–{hi:.2f}), {r['served_win_rate_n']}{_taste(r)} | "
                    f"{_change(r)} | {rm} | {'yes' if never_worse else '**no**'} | {met} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", nargs="+", metavar="REPORT", default=None,
                    help="write the summary table of these report-N.json files (from --work-dir) and stop")
    ap.add_argument("--title", default="every shipped rater", help="the --table section's title (after 'Live loop "
                    "(studio): ')")
    ap.add_argument("--remeasure", nargs="+", metavar="REPORT", default=None,
                    help="evaluate these report-N.json files' served versions again (their --work-dir studios) on "
                         "--eval-prompts, update the files and stop")
    ap.add_argument("--oracle", help="rater: file.py:function, module:function or a shipped name")
    ap.add_argument("--labels", type=int, default=100, help="labels in all, A/B votes included")
    ap.add_argument("--pace", type=float, default=2.0, help="seconds between labels")
    ap.add_argument("--minutes", type=float, default=30.0, help="stop after this long in any case")
    ap.add_argument("--report-at", type=int, nargs="*", default=[],
                    help="also report what a run stopped after this many labels serves (e.g. 100 of 300)")
    # the whole held-out pool by default: on the first 128 prompts (256 images) the served rounds of tables 14 and
    # 16 read fidelity 1.7 points lower on average than on all 465 (8 of 9 lower; big_centred's round-1 -2.3
    # there, -1.0 on all), so a row crossed the 2-point line by the choice of prompts (RESULTS, table at 114e96f)
    ap.add_argument("--eval-prompts", type=int, default=512,
                    help="held-out prompts, 2 seeds each (the toy pool holds 465: 930 images, win rate's 90%% interval "
                         "about ±0.03, fidelity's standard error 0.5-1 point; 128: ±0.05 and 1-1.8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", default=None, help="the studio's data directory (default: temp)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="change a studio setting from the app's default: a probe, written to the throw-away RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="a minute: 20 labels at pace 0, short rounds; no RESULTS")
    args = ap.parse_args()
    if args.table:
        reports = [json.loads(Path(f).read_text()) for f in args.table]
        intro = ("Raters through the studio's own loop (`Studio` with the app's defaults), 300 labels at one label "
                 "per 2 s on the 2-core CPU; each run's details are in its report files (--work-dir). The 100-label "
                 "rows are measured inside the 300-label runs when the 100th label was spent (`--report-at 100`): the "
                 "version served then, evaluated at the end. Win rate: the rater's preference for the served version "
                 "over the base on held-out prompts x 2 seeds (n in the table; ties half). Never worse: the win rate's 90% interval "
                 "reaches 0.5 and prompt fidelity is within 2 points of the base. Target (learnable tastes): served "
                 "win rate >= 0.80 at 100 labels, >= 0.90 at 300. A noisy rater flips a fifth of its answers, so even a "
                 "served model better on every held-out image scores 0.80 under it: its row also gives the win rate "
                 "under its noiseless taste.\n\n")
        print(update_section(f"Live loop (studio): {args.title}", intro + table(reports), results_path(args.quick)))
        return
    if args.remeasure:
        for f in args.remeasure:
            print(json.dumps(remeasure(Path(f), args.eval_prompts, args.seed)))
        return
    if not args.oracle:
        ap.error("--oracle is required")
    oracle = load_rater(args.oracle)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="live-loop-"))
    overrides = dict(auto_round_every=10, round_epochs=2, round_epochs_base_factor=1.0, round_prompts=2,
                     compare_prompts=2) if args.quick else {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name in text_choices():  # StudioSettings checks the value
            overrides[name] = value
            continue
        if name not in RANGES:
            ap.error(f"--set {item}: not a studio setting with a checked value ({', '.join([*RANGES, *text_choices()])})")
        overrides[name] = coerce(name, value)
    settings = StudioSettings(data_dir=work, admin_password=uuid.uuid4().hex, snapshot_every_s=0, **overrides)
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)  # noqa: E731
    studio = Studio(settings)
    labels = 20 if args.quick else args.labels
    pace = 0.0 if args.quick else args.pace
    n_eval = 2 if args.quick else args.eval_prompts
    reports = []
    try:
        voted = rate(studio, oracle, labels, pace, t0 + 60 * args.minutes, log,
                     report_at={n for n in args.report_at if 0 < n < labels})
        log(f"rating done: {voted['labels']} labels ({voted['gate_labels']} A/B)")
        studio.rounds.cancel()
        report = {"oracle": args.oracle, "labels": voted["labels"], "pace_s": pace, "gate_labels": voted["gate_labels"],
                  "served_at_labels": voted["served_at_labels"], **round_counts(studio), "auto_note": studio.auto_note,
                  "wall_s": time.time() - t0,
                  "next_pair_ms_p50": voted["next_pair_ms_p50"], "next_pair_ms_p95": voted["next_pair_ms_p95"]}
        rm = studio.rounds.reward_model
        report.update(rm_info(rm))
        report.update(evaluate(studio, oracle, n_eval, args.seed, rm))
        reports.append((report, ""))
        for n, snap in sorted(voted["at"].items()):  # serve what was served then (a rollback), and measure it
            if snap["served_version"] != studio.generator.version:
                studio.activate(snap["served_version"], by="bench")
            early = {"oracle": args.oracle, "pace_s": pace, **{k: v for k, v in snap.items() if k != "reward_model"},
                     **rm_info(snap["reward_model"]), **evaluate(studio, oracle, n_eval, args.seed, snap["reward_model"])}
            reports.append((early, f" Measured inside the {voted['labels']}-label run when label {n} was spent: "
                                   "what a run stopped there serves (a round still training then could not be "
                                   "promoted without more votes)."))
    finally:
        studio.close()
    name = (Path(args.oracle.split(":")[0]).stem + ":" + args.oracle.split(":")[-1]) if ":" in args.oracle else args.oracle
    for report, note in reports[::-1]:
        report = {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}
        (work / f"report-{report['labels']}.json").write_text(json.dumps(report, indent=1))
        path = update_section(f"Live loop (studio): {name}, {report['labels']} labels, pace {pace:g} s",
                              section(report, settings, args.oracle, note), results_path(args.quick or bool(args.set)))
        print(f"wrote {path}")
        print(json.dumps(report))  # the last line is the full run's report


def remeasure(path: Path, n_prompts: int, seed: int) -> dict:
    """A finished run's report with its served version evaluated again on `n_prompts` held-out prompts x 2
    seeds (its studio directory opened without workers). The reward model's held-out figure is measured again
    only for the full run's report (the studio restores its latest reward model, not an earlier one)."""
    report = json.loads(path.read_text())
    studio = Studio(StudioSettings(data_dir=path.parent, admin_password=uuid.uuid4().hex, snapshot_every_s=0),
                    start_workers=False)
    try:
        full = all(int(p.stem.split("-")[1]) <= report["labels"] for p in path.parent.glob("report-*.json"))
        if report["served_version"] != studio.generator.version:
            studio.activate(report["served_version"], by="bench")
        new = evaluate(studio, load_rater(report["oracle"]), n_prompts, seed, studio.rounds.reward_model if full else None)
    finally:
        studio.close()
    if not full:  # an earlier report's held-out reward-model figure belongs to its own reward model
        report.pop("rm_accuracy_heldout_prompts", None)
        report.pop("rm_accuracy_heldout_prompts_n", None)
    report.update({k: round(v, 4) if isinstance(v, float) else v for k, v in new.items()})
    path.write_text(json.dumps(report, indent=1))
    return report


def rm_info(rm) -> dict:
    if rm is None:
        return {}
    return {"rm_accuracy": rm.metrics.get("accuracy"), "rm_accuracy_n": rm.metrics.get("accuracy_n"),
            "rm_accuracy_ci": rm.metrics.get("accuracy_ci")}


if __name__ == "__main__":
    main()
