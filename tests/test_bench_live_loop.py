"""The live-loop summary table checks each run against the issue's targets (never worse; learnable tastes)."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # as when the script runs: its helpers (results.py) sit beside it
spec = importlib.util.spec_from_file_location("live_loop", BENCH / "live_loop.py")
live_loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(live_loop)


def report(oracle, labels, win, interval, fidelity):
    return {"oracle": oracle, "labels": labels, "gate_labels": 10, "rounds_started": 2, "rounds_promoted": 1,
            "rounds_rejected": 1, "served_version": "round-2", "served_win_rate": win, "served_win_rate_n": 64,
            "served_win_rate_interval90": interval, "fidelity_change_points": fidelity, "rm_accuracy": 0.9,
            "rm_accuracy_n": 30}


def test_table_marks_worse_runs_and_missed_targets():
    rows = live_loop.table([
        report("warm_colours", 300, 0.95, [0.9, 0.98], +1.0),  # learnable, target met
        report("warm_colours", 100, 0.70, [0.6, 0.8], -0.5),  # learnable, below 0.80
        report("follows_prompt", 300, 0.30, [0.2, 0.45], 0.0),  # worse: its interval stays below 0.5
        report("plain_background", 100, 0.55, [0.45, 0.65], -3.0),  # worse: fidelity fell 3 points
    ]).splitlines()[2:]
    by = {(r.split("|")[1].strip(), r.split("|")[2].split()[0]): r for r in rows}
    assert by[("warm_colours", "300")].endswith("| yes | met (>= 0.90) |")
    assert by[("warm_colours", "100")].endswith("| yes | missed (>= 0.80) |")
    assert by[("follows_prompt", "300")].endswith("| **no** | – |")
    assert by[("plain_background", "100")].endswith("| **no** | – |")


def test_a_noisy_raters_row_also_gives_its_noiseless_tastes_win_rate():
    """A noisy rater scores even a perfect improvement at 1 - flip: its row shows the noiseless figure too."""
    r = report("noisy_warm_colours", 300, 0.74, [0.69, 0.78], -1.0)
    assert "noiseless" not in live_loop.table([r])
    row = live_loop.table([{**r, "served_win_rate_taste": 0.871}]).splitlines()[2]
    assert "0.740 (0.69–0.78), 64; noiseless taste 0.871 |" in row and row.endswith("| missed (>= 0.90) |")


def test_a_runs_section_says_at_which_label_each_version_was_first_served():
    """Whether a 100-label run serves round 1 turns on when its trial ends: the section names that label."""
    from studio.settings import StudioSettings

    r = {**report("warm_colours", 100, 0.70, [0.6, 0.8], -0.5), "fidelity_base": 0.9, "fidelity_served": 0.89,
         "round_verdicts": ["round-1: done/promoted"], "pace_s": 2.0}
    assert "first served" not in live_loop.section({**r, "served_at_labels": {}}, StudioSettings(), "warm_colours")
    text = live_loop.section({**r, "served_at_labels": {"round-1": 97, "round-2": 168}}, StudioSettings(),
                             "warm_colours")
    assert "| first served at label | round-1 at 97, round-2 at 168 |" in text
