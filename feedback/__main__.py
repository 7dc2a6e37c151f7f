"""Command line for the feedback store: stats, export, import, snapshot, restore, simulate.

Examples:
  python -m feedback stats --data-dir data/feedback
  python -m feedback export --data-dir data/feedback --out prefs.parquet
  python -m feedback import --data-dir data/feedback prefs.parquet
  python -m feedback snapshot --data-dir data/feedback --backup-dir /mnt/bucket/feedback
  python -m feedback restore --data-dir data/feedback --backup-dir /mnt/bucket/feedback
  python -m feedback simulate --data-dir data/feedback --rater warm_colours --n 100
"""

from __future__ import annotations

import argparse
import sys

from rlcm.cli_report import run_and_report

from .raters import load_rater
from .simulate import simulate
from .store import FeedbackStore


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m feedback", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    cmds = {
        "stats": sub.add_parser("stats", help="counts and per-rater numbers, as JSON"),
        "export": sub.add_parser("export", help="write the comparisons as Pick-a-Pic style Parquet"),
        "import": sub.add_parser("import", help="validate and import a Pick-a-Pic style Parquet file"),
        "snapshot": sub.add_parser("snapshot", help="consistent copy of the database (and new images) to a backup dir"),
        "restore": sub.add_parser("restore", help="restore the newest snapshot if the local database is missing"),
        "simulate": sub.add_parser("simulate", help="label pairs with a simulated rater"),
    }
    for c in cmds.values():
        c.add_argument("--data-dir", required=True, help="directory holding feedback.db and images/")
    cmds["export"].add_argument("--out", required=True, help="Parquet file to write")
    cmds["export"].add_argument("--include-skips", action="store_true", help="also export skipped pairs")
    cmds["import"].add_argument("path", help="Parquet file to import")
    for name in ("snapshot", "restore"):
        cmds[name].add_argument("--backup-dir", required=True, help="local or mounted backup folder")
        cmds[name].add_argument("--repo-id", help="also mirror to/from this Hugging Face dataset repo")
        cmds[name].add_argument("--token", help="Hugging Face token (default: the logged-in one)")
    cmds["simulate"].add_argument("--rater", required=True, help="shipped rater name, file.py:function or module:function")
    cmds["simulate"].add_argument("--name", help="rater id recorded in the store (default: --rater)")
    cmds["simulate"].add_argument("--n", type=int, default=100, help="pairs to label")
    cmds["simulate"].add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run_and_report(lambda: _run(args))


def _run(args) -> dict:
    if args.command == "restore":
        snap = FeedbackStore.restore_latest(args.backup_dir, args.data_dir, repo_id=args.repo_id, token=args.token)
        return {"restored": str(snap) if snap else None}
    with FeedbackStore(args.data_dir) as store:
        if args.command == "stats":
            out = {"counts": store.counts(), "raters": store.rater_stats(), "rounds": len(store.rounds())}
        elif args.command == "export":
            out = {"wrote": str(store.export_parquet(args.out, include_skips=args.include_skips)),
                   "comparisons": len(store.comparisons(include_skips=args.include_skips))}
        elif args.command == "import":
            out = store.import_parquet(args.path)
        elif args.command == "snapshot":
            out = {"snapshot": str(store.snapshot(args.backup_dir, repo_id=args.repo_id, token=args.token))}
        else:
            out = simulate(store, load_rater(args.rater), args.n, args.name or args.rater, rng=args.seed)
    return out


if __name__ == "__main__":
    sys.exit(main())
