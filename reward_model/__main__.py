"""Command line for the reward model: fit on a feedback store, evaluate, export (and push).

Examples:
  python -m reward_model fit --db data/feedback --clip toy-clip --out data/reward/rm-001
  python -m reward_model eval --model data/reward/rm-001 --db data/feedback-new
  python -m reward_model export --model data/reward/rm-001.zip --out /tmp/rm --license mit --dataset me/prefs \
      --repo-id me/rlcm-rm
"""

from __future__ import annotations

import argparse
import sys

from rlcm.cli_report import run_and_report

DEFAULT_CLIP = "toy-clip"  # the shipped toy CLIP by name (rlcm.paths); works from any directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reward_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit on a store's labelled pairs and export the model (dir + zip)")
    f.add_argument("--db", required=True, help="feedback data directory (holding feedback.db)")
    f.add_argument("--clip", default=DEFAULT_CLIP,
                   help=f"CLIP: shipped toy name, directory, hf-hub:org/repo or open_clip name (default {DEFAULT_CLIP})")
    f.add_argument("--out", required=True, help="directory to export to; a .zip is written beside it")
    f.add_argument("--ensemble", type=int, default=None, help="number of heads")
    f.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="metrics of an exported model on a store's labelled pairs")
    e.add_argument("--model", required=True, help="exported directory or zip")
    e.add_argument("--db", required=True, help="feedback data directory; use pairs the model did not train on")
    x = sub.add_parser("export", help="re-export a model (dir or zip) to a directory + zip, optionally push it")
    x.add_argument("--model", required=True, help="exported directory or zip")
    x.add_argument("--out", required=True, help="directory to write")
    x.add_argument("--license", help="model card license (a Hub license id; default: the model's, else unknown)")
    x.add_argument("--dataset", action="append", default=None, help="Hub dataset repo it was fitted on (repeatable)")
    x.add_argument("--repo-id", help="also upload to this Hugging Face model repo")
    x.add_argument("--token", help="Hugging Face token (default: the logged-in one)")
    args = p.parse_args(argv)
    return run_and_report(lambda: _run(args))


def _run(args) -> dict:
    import reward_model as rm
    from feedback import FeedbackStore

    if args.command == "fit":
        cfg = rm.FitConfig(seed=args.seed, **({"ensemble_size": args.ensemble} if args.ensemble else {}))
        with FeedbackStore(args.db) as store:
            model, metrics = rm.fit(store, args.clip, cfg)
        d, z = rm.export(model, args.out, metrics)
        out = {"version": model.version, "dir": str(d), "zip": str(z), "metrics": metrics}
    elif args.command == "eval":
        model = rm.load(args.model)
        with FeedbackStore(args.db) as store:
            out = {"version": model.version, **rm.evaluate(model, store)}
    else:
        model = rm.load(args.model)
        card = None
        if args.license or args.dataset:  # the rest of the card's metadata stays as exported
            have = rm.CardInfo(**model.config.card)
            card = rm.CardInfo(license=args.license or have.license, datasets=args.dataset or have.datasets,
                               base_model=have.base_model)
        d, z = rm.export(model, args.out, card=card)
        out = {"dir": str(d), "zip": str(z)}
        if args.repo_id:
            out["pushed"] = rm.push_to_hub(d, args.repo_id, token=args.token)
    return out


if __name__ == "__main__":
    sys.exit(main())
