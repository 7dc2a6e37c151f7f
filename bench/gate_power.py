"""How often the studio's gate promotes a candidate, by how much people prefer it and how often they can't tell.

    python bench/gate_power.py [--sims 2000] [--replay DATA_DIR ...]

Simulates A/B votes (win, loss or tie with fixed probabilities) through `studio.gate.decide` with the
default `GateRule` (rejected once people are confident fewer than 1 vote in 5 sees a difference, inconclusive after
32 decisive votes or 64 in all) and variants: the default with a smaller margin (0.10, 0.05: a noisy rater who
flips a fifth of its answers shows a true q of 0.8 as 0.68), the same without the no-difference rejection (before), 32 votes in
all (the default before that), 16 decisive or 64 in all, a rejection needing 4 decisive votes, a promotion needing 8
decisive votes or P(better) >= 0.975 (these three not adopted), and the
earliest rule, which counted a tie as half a win and half a loss in the posterior, with 24 votes at most.
Prints, per tie rate and q (the candidate's share of the votes that see a difference), the share promoted
and the mean votes a trial took. `--replay` feeds the A/B votes recorded in live-loop work directories to
the default and the earliest rule in the order they were cast.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio import gate  # noqa: E402


@lru_cache(maxsize=None)
def _ties_half(w: int, l: int, t: int, rule: gate.GateRule) -> str:
    """The rule before the sign test: ties added half a win and half a loss to the posterior."""
    if w + l + t < rule.min_votes:
        return "wait"
    post = stats.beta(1 + w + t / 2, 1 + l + t / 2)
    if post.sf(0.5) >= rule.confidence:
        return "promote"
    if post.sf(0.5 + rule.margin) < 1 - rule.confidence or w + l + t >= rule.max_votes:
        return "reject"
    return "wait"


@lru_cache(maxsize=None)
def _studio(w: int, l: int, t: int, rule: gate.GateRule) -> str:
    return gate.decide(gate.Record(w, l, t), rule)[0]


@lru_cache(maxsize=None)
def _reject_on_4(w: int, l: int, t: int, rule: gate.GateRule) -> str:
    """The sign test, but a rejection before the limit needs at least 4 votes that saw a difference (the
    default rejects 0 wins, 2 losses: P(q > 0.65) = 0.043)."""
    d = _studio(w, l, t, rule)
    return "wait" if d == "reject" and w + l < 4 and w + l + t < rule.max_votes else d


@lru_cache(maxsize=None)
def _promote_on_8(w: int, l: int, t: int, rule: gate.GateRule) -> str:
    """The default, but a promotion needs at least 8 votes that saw a difference (the default promotes on 4
    wins, 0 losses: table24's noisy_warm_colours round 4 was promoted on 4-0-8 and was no better than the base)."""
    d = _studio(w, l, t, rule)
    return "wait" if d == "promote" and w + l < 8 else d


@lru_cache(maxsize=None)
def _promote_at_975(w: int, l: int, t: int, rule: gate.GateRule) -> str:
    """The default, but a promotion needs P(better) >= 0.975 (rejections keep the default's 0.95)."""
    d = _studio(w, l, t, rule)
    return "wait" if d == "promote" and gate.Record(w, l, t).p_above(0.5) < 0.975 else d


def trial(probs: tuple[float, float], rule: gate.GateRule, decide, rng) -> tuple[str, int]:
    w = l = t = 0
    while True:
        u = rng.random()
        w, l, t = (w + 1, l, t) if u < probs[0] else (w, l + 1, t) if u < probs[0] + probs[1] else (w, l, t + 1)
        d = decide(w, l, t, rule)
        if d != "wait":
            return d, w + l + t


def simulate(sims: int) -> None:
    rules = {"sign test, no-difference rejection, 32 decisive or 64 votes (default)": (gate.GateRule(), _studio),
             "the default with margin 0.10": (gate.GateRule(margin=0.10), _studio),
             "the default with margin 0.05": (gate.GateRule(margin=0.05), _studio),
             "sign test, 32 decisive or 64 votes (before)": (gate.GateRule(min_seen=0), _studio),
             "sign test, 32 votes": (gate.GateRule(max_decisive=32, max_votes=32, min_seen=0), _studio),
             "sign test, 16 decisive or 64 votes": (gate.GateRule(max_decisive=16, max_votes=64, min_seen=0), _studio),
             "sign test, 32 votes, rejection on >= 4 decisive": (gate.GateRule(max_decisive=32, max_votes=32,
                                                                               min_seen=0),
                                                                 _reject_on_4),
             "the default, promotion on >= 8 decisive": (gate.GateRule(), _promote_on_8),
             "the default, promotion at P(better) >= 0.975": (gate.GateRule(), _promote_at_975),
             "ties as halves, 24 votes (before)": (gate.GateRule(max_decisive=24, max_votes=24), _ties_half)}
    print("| ties | q | win rate | " + " | ".join(f"{k}: promoted, votes" for k in rules) + " |")
    print("|---|---|---|" + "---|" * len(rules))
    for tie in (0.0, 0.5, 0.7, 0.8, 0.9):
        for q in (0.4, 0.5, 0.65, 0.68, 0.8):
            probs = ((1 - tie) * q, (1 - tie) * (1 - q))
            cells = []
            for rule, decide in rules.values():
                rng = np.random.default_rng(0)
                out = [trial(probs, rule, decide, rng) for _ in range(sims)]
                cells.append(f"{np.mean([d == 'promote' for d, _ in out]):.2f}, {np.mean([n for _, n in out]):.1f}")
            print(f"| {tie:.1f} | {q:.2f} | {probs[0] + tie / 2:.3f} | " + " | ".join(cells) + " |")


def replay(dirs: list[str]) -> None:
    rule, before = gate.GateRule(), gate.GateRule(max_decisive=24, max_votes=24)
    print("| run | candidate | verdict then | default rule now | ties as halves, 24 | all its A/B votes (w, l, t) |")
    print("|---|---|---|---|---|---|")
    for d in dirs:
        db = sqlite3.connect(Path(d) / "feedback.db")
        gen = dict(db.execute("select id, generator from samples"))
        votes = [{"generator_a": gen.get(a), "generator_b": gen.get(b), "choice": c} for a, b, c in
                 db.execute("select sample_a, sample_b, choice from comparisons where undone_at is null order by id")]
        for rid, verdict, parent in db.execute("select id, verdict, json_extract(config, '$.init_version') "
                                               "from rounds where status = 'done'"):
            cand, found = f"round-{rid}", {}
            for k in range(1, len(votes) + 1):
                if {votes[k - 1]["generator_a"], votes[k - 1]["generator_b"]} != {cand, parent}:
                    continue
                rec = gate.record(votes[:k], cand, parent)
                for name, d_ in (("sign", _studio(rec.wins, rec.losses, rec.ties, rule)),
                                     ("half", _ties_half(rec.wins, rec.losses, rec.ties, before))):
                    if d_ != "wait" and name not in found:
                        found[name] = f"{d_} at {rec.n}"
            rec = gate.record(votes, cand, parent)
            if rec.n:
                print(f"| {Path(d).resolve().parent.name}/{Path(d).resolve().name} | {cand} | {verdict} | {found.get('sign', 'wait')} | {found.get('half', 'wait')} "
                      f"| {rec.wins}, {rec.losses}, {rec.ties} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--replay", nargs="*", default=[])
    a = ap.parse_args()
    simulate(a.sims)
    if a.replay:
        print()
        replay(a.replay)


if __name__ == "__main__":
    main()
