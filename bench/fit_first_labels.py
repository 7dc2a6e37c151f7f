"""A studio's reward model as it would have been after its first K labels: for probing rounds that start earlier.

    python bench/fit_first_labels.py runs/table18/big_centred 10 runs/rm/big_centred-10
    python bench/round_probe.py runs/rm/big_centred-10 rel 0.25 12 3e-3 16 --at 8

Copies the studio's database, keeps its first K labelled comparisons (skips and undone votes don't count, as in
the studio), fits the studio's reward model on them (`reward_model.fit`, default FitConfig, the toy CLIP) and
exports it to OUT (the directory bench/round_probe.py reads). Prints its held-out metrics as one JSON line.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import reward_model  # noqa: E402
from feedback.store import FeedbackStore  # noqa: E402
from rlcm.clip import load_clip  # noqa: E402


def main() -> None:
    src, k, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copy(src / "feedback.db", tmp / "feedback.db")
        (tmp / "images").symlink_to((src / "images").resolve())  # read only: the fit caches embeddings in tmp
        with sqlite3.connect(tmp / "feedback.db") as db:
            ids = [r[0] for r in db.execute("SELECT id FROM comparisons WHERE choice != 'skip' AND undone_at IS NULL"
                                            " ORDER BY id")]
            if len(ids) < k:
                raise SystemExit(f"{src} has {len(ids)} labels, fewer than {k}")
            db.execute("DELETE FROM comparisons WHERE id > ?", (ids[k - 1],))
        db.close()
        rm, metrics = reward_model.fit(FeedbackStore(tmp), load_clip("toy-clip", device="cpu"),
                                       reward_model.FitConfig())
        reward_model.export(rm, out, metrics)
    print(json.dumps({key: metrics[key] for key in ("n_pairs", "accuracy", "accuracy_n", "accuracy_ci",
                                                    "better_than_chance")}))


if __name__ == "__main__":
    main()
