"""Mutation check: plant wrong-math and wrong-logic mutants in a copy of the repository; the tests must catch each.

    python bench/mutation_check.py                 # every mutant; writes the "Mutation check" section of RESULTS.md
    python bench/mutation_check.py --only kl_sign  # some mutants by name; nothing recorded
    python bench/mutation_check.py --list

The working tree (tracked and untracked, not ignored files) is copied to a temporary directory. First the
unmutated copy must pass every test file the mutants use (otherwise "killed" would mean nothing); then each mutant
replaces one exact snippet (which must occur exactly once) in one file, runs its test files with pytest in a
subprocess (OMP_NUM_THREADS=1, one torch thread, stop at the first failure) and is put back. A mutant is killed
when pytest fails. Prints a markdown table and a final JSON line; exits 1 if a mutant survived, the baseline
failed or a snippet was not found (the code moved on: update the mutant).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATH, STATS, POLICY = "tests/test_math.py", "tests/test_stats.py", "tests/test_policy.py"
CONFIRM = "tests/test_gate.py::test_a_fidelity_change_passes_the_confirmation_only_when_it_is_surely_within_the_limit"
CLUSTER = "tests/test_gate.py::test_a_fidelity_change_counts_a_prompt_once_however_many_seeds_show_it"
RULE = "tests/test_gate.py::test_rule_promotes_clear_wins_and_rejects_ties_and_losses"
SAME_SEED = "tests/test_gate.py::test_only_same_seed_votes_count_in_a_trial"
EARLIER = "tests/test_serving.py::test_earlier_version_pairs_never_show_the_candidate"
ON_TRIAL = "tests/test_gate.py::test_a_confirmation_unsettled_by_its_first_look_goes_on_while_people_vote"
STEP_BACK_ON_TRIAL = "tests/test_gate.py::test_a_round_that_fails_a_look_on_trial_steps_back_as_a_new_version"
PAIR_CHOICE = "tests/test_serving.py::test_queue_shows_the_pair_the_reward_model_is_least_sure_about"
KEEPER = "tests/test_gate.py::test_a_round_hands_over_its_last_epoch_that_kept_prompt_fidelity"
WARM_UP = "tests/test_gate.py::test_the_warm_up_scores_the_base_on_the_next_rounds_confirmation_while_no_round_trains"
CUE_COLUMNS = "tests/test_reward_model.py::test_cue_columns_are_the_named_statistics"
CUE_PRIORS = "tests/test_reward_model.py::test_the_fit_offers_the_cue_priors"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file, relative to the repository root
    old: str  # exact snippet, found exactly once
    new: str
    tests: tuple[str, ...]  # test files that must fail
    what: str  # the bug, in words


SWAP_HINGE = "tests/test_rewards.py::test_the_swap_hinge_penalises_only_an_image_a_swapped_prompt_fits_better"

MUTANTS = [
    Mutant("logprob_sum", "rlcm/policy.py", "return lp.mean(dim=tuple(range(1, lp.ndim)))",
           "return lp.sum(dim=tuple(range(1, lp.ndim)))", (MATH,),
           "per-step log-prob summed over C*H*W instead of averaged (~1000x the step size)"),
    Mutant("kl_sum", "rlcm/policy.py", "return 0.5 * d.pow(2).mean(dim=tuple(range(1, d.ndim)))",
           "return 0.5 * d.pow(2).sum(dim=tuple(range(1, d.ndim)))", (MATH,),
           "KL anchor summed over dims instead of averaged"),
    Mutant("step5_clip_dropped", "rlcm/policy.py", "x0, _ = self.x0_eps(out, x, a)\n        x0 = self.clip_x0(x0)",
           "x0, _ = self.x0_eps(out, x, a)", (MATH,),
           "LCM policy skips the scheduler's x0 clip / threshold (step 5)"),
    Mutant("adv_sign", "rlcm/stats.py", "= rewards[mask] - ref.mean()", "= ref.mean() - rewards[mask]",
           (STATS, MATH), "advantage sign flipped in the stat tracker (training would minimise the reward)"),
    Mutant("stats_sum_for_mean", "rlcm/stats.py", "= rewards[mask] - ref.mean()", "= rewards[mask] - ref.sum()",
           (STATS, MATH), "stat tracker centres on the buffer's sum instead of its mean"),
    Mutant("batch_scale_sum_for_mean", "rlcm/stats.py", "np.sqrt(np.mean(adv ** 2))", "np.sqrt(np.sum(adv ** 2))",
           (STATS,), "the batch scale divides by the root of a sum of squares instead of their mean"),
    Mutant("ratio_inverted", "rlcm/trainer.py", "ratio = torch.exp(logp - old_logp)",
           "ratio = torch.exp(old_logp - logp)", (MATH,), "importance ratio pi_old / pi_new"),
    Mutant("ratio_clip_removed", "rlcm/trainer.py",
           "clipped = -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)", "clipped = -adv * ratio",
           (MATH,), "PPO ratio clip removed"),
    Mutant("ratio_clip_optimistic", "rlcm/trainer.py", "torch.maximum(unclipped, clipped)",
           "torch.minimum(unclipped, clipped)", (MATH,), "PPO takes the optimistic (min-loss) bound"),
    Mutant("adv_clip_removed", "rlcm/trainer.py",
           "return np.clip(local, -self.cfg.adv_clip_max, self.cfg.adv_clip_max), all_rewards",
           "return local, all_rewards", (MATH,), "advantage clipping removed"),
    Mutant("kl_sign", "rlcm/trainer.py", "loss = loss + cfg.kl_coef * kl.mean()",
           "loss = loss - cfg.kl_coef * kl.mean()", (MATH,), "KL penalty sign flipped (pushes away from the base)"),
    Mutant("accum_too_small", "rlcm/trainer.py", "        return n // k\n", "        return n // (k + 1)\n",
           (MATH,), "accumulation count too small: extra steps on partial sums"),
    Mutant("accum_ignores_steps", "rlcm/trainer.py", "        return n // k\n", "        return n\n",
           (MATH,), "accumulation count ignores optimizer_steps_per_epoch (one step per epoch)"),
    Mutant("stale_gradient", "rlcm/trainer.py", "        for p in self.params:\n            p.grad = None\n", "",
           (MATH,), "gradients not zeroed at the start of an epoch"),
    Mutant("bt_sign", "reward_model/head.py", "binary_cross_entropy_with_logits(r_a - r_b,",
           "binary_cross_entropy_with_logits(r_b - r_a,", (MATH,), "Bradley-Terry logit r_b - r_a"),
    Mutant("bt_label", "reward_model/head.py", "y.expand_as(r_a)", "(1 - y).expand_as(r_a)", (MATH,),
           "Bradley-Terry labels flipped"),
    Mutant("linear_bt_grad_sign", "reward_model/linear.py", "(share * (torch.sigmoid(z) - t)) @ x",
           "(share * (t - torch.sigmoid(z))) @ x", (MATH,), "linear heads' BT gradient with the wrong sign"),
    Mutant("linear_bt_sum_for_mean", "reward_model/linear.py",
           "share = share / share.sum(1, keepdim=True).clamp_min(1e-9)", "share = share", (MATH,),
           "linear heads minimise the summed BT loss, not the mean (the L2 penalty is outweighed)"),
    Mutant("cue_columns_shifted", "reward_model/embeddings.py", "[start + PERCEPTUAL_NAMES.index(n) for n in names]",
           "[start + PERCEPTUAL_NAMES.index(n) + 1 for n in names]", (CUE_COLUMNS,),
           "a cue prior weighs the statistics next to the ones it names"),
    Mutant("cue_priors_dropped", "reward_model/fit.py", "sets += [(c,) for c in cues] if self.cues else []",
           "sets += []", (CUE_PRIORS,), "the fit never offers the cue priors"),
    Mutant("confirm_early_sign", "studio/checks.py", 'abs(change["change_points"] + KEEP_FIDELITY_DROP)',
           'abs(change["change_points"] - KEEP_FIDELITY_DROP)', (CONFIRM,),
           "the confirmation's first look measures its distance from +2 points instead of -2"),
    Mutant("fidelity_se_per_image", "studio/checks.py", "resid = np.bincount(group, weights=d - d.mean())",
           "resid = d - d.mean()", (CLUSTER,),
           "the fidelity change's standard error treats the two seeds of a prompt as independent images"),
    Mutant("gate_seen_counts_ties", "studio/gate.py", "stats.beta(1 + self.wins + self.losses, 1 + self.ties)",
           "stats.beta(1 + self.ties, 1 + self.wins + self.losses)", (RULE,),
           "the gate's share of votes that see a difference counts the ties instead"),
    Mutant("trial_counts_cross_seed", "feedback/store.py", "where += \" AND sa.seed = sb.seed AND", "where += \" AND 1 AND",
           (SAME_SEED,), "the gate's trial counts candidate-vs-served votes on two seeds as A/B votes"),
    Mutant("keeper_mean_only", "studio/rounds.py", "if checks.confirm_reason(change) is None:",
           'if change["change_points"] >= -checks.KEEP_FIDELITY_DROP:', (KEEPER,),
           "the round's keeper hands over an epoch by its mean fidelity change alone, ignoring its standard error"),
    Mutant("earlier_pair_shows_candidate", "studio/serving.py", "not in (version, self.gen.candidate)]",
           "not in (version,)]", (EARLIER,), "an earlier-version pair may show the pending candidate's sample"),
    Mutant("cold_pair_least_distinct", "studio/serving.py", "(f[ii] - f[jj]).norm(dim=1).argmax()",
           "(f[ii] - f[jj]).norm(dim=1).argmin()", (PAIR_CHOICE,),
           "before the first reward model the queue shows the two most alike images instead of the most distinct"),
    Mutant("trial_promotes_unconfirmed", "studio/runtime.py", 'if decision == "promote" and cand == self._confirming:',
           'if decision == "promote" and cand == self._confirming and False:', (ON_TRIAL,),
           "votes promote a candidate whose fidelity confirmation is still running"),
    Mutant("held_trial_keeps_ab_pairs", "studio/runtime.py", "self._held is None or self._held != self._confirming",
           "True", (ON_TRIAL,), "A/B pairs go on after people's votes would promote a candidate held for its checks"),
    Mutant("no_step_back_on_trial", "studio/runtime.py", "fallback if lost is None else None", "None",
           (STEP_BACK_ON_TRIAL,), "a round that fails a look on trial is dropped instead of stepping back"),
    Mutant("step_back_keeps_old_votes", "studio/runtime.py",
           "new, dst = self._add_finished_round(",
           'new, dst = rid, self.store.update_round(rid, verdict=None) and Path(row["lora_path"]); '
           "replace_lora(dst, earlier); (lambda *a, **k: a)(", (STEP_BACK_ON_TRIAL,),
           "the earlier epoch goes on trial under the failed round's name, with the votes cast on the failed weights"),
    Mutant("warm_up_other_draw", "studio/runtime.py", "rid = self.store.next_round_id()",
           "rid = self.store.next_round_id() + 1", (WARM_UP,),
           "the warm-up renders the base on the confirmation set of the round after next"),
    Mutant("warm_up_while_training", "studio/runtime.py", "if self.rounds.running or self._stop.is_set():",
           "if self._stop.is_set():", (WARM_UP,), "the warm-up goes on rendering while a round trains"),
    Mutant("swap_hinge_sign", "rlcm/rewards.py", "min(0.0, s[0] - s[lo:hi].max())", "max(0.0, s[0] - s[lo:hi].max())",
           (SWAP_HINGE,), "swap hinge rewards an image for fitting its prompt instead of penalising a better swap"),
    Mutant("swap_hinge_mean", "rlcm/rewards.py", "min(0.0, s[0] - s[lo:hi].max())", "min(0.0, s[0] - s[lo:hi].mean())",
           (SWAP_HINGE,), "swap hinge against the mean of a word's swaps instead of the best one"),
]


def copy_tree(dst: Path) -> None:
    """The working tree's tracked and untracked, not ignored files (what a commit of everything would hold)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[bool, float, str]:
    """(passed, seconds, what failed first) of pytest on `tests` in `copy`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLCM_TEST_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    t = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
                              *tests],
                             cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        ok, out = res.returncode == 0, res.stdout + res.stderr
    except subprocess.TimeoutExpired:
        ok, out = False, "timeout"
    failed = [line.split(" - ")[0] for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return ok, time.perf_counter() - t, failed[0] if failed else "\n".join(out.strip().splitlines()[-3:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="mutant names (default: all); nothing is recorded")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per pytest run")
    ap.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = ap.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:24s} {m.path:22s} {m.what}")
        return 0
    names = {m.name for m in MUTANTS}
    if args.only is not None and set(args.only) - names:
        ap.error(f"unknown mutants {sorted(set(args.only) - names)}; valid: {sorted(names)}")
    mutants = [m for m in MUTANTS if args.only is None or m.name in args.only]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        tests = sorted({t for m in mutants for t in m.tests})
        ok, secs, tail = run_tests(copy, tests, args.timeout)
        print(f"baseline (unmutated copy): {'passed' if ok else 'FAILED'} in {secs:.0f}s: {' '.join(tests)}",
              flush=True)
        if not ok:
            print(tail)
            print(json.dumps({"baseline": "failed", "tests": tests, "first_failure": tail}))
            return 1
        rows = []
        for m in mutants:
            path = copy / m.path
            original = path.read_text()
            if original.count(m.old) != 1:
                rows.append((m, "stale", 0.0, f"snippet found {original.count(m.old)} times"))
                print(f"{m.name}: stale (snippet found {original.count(m.old)} times)", flush=True)
                continue
            path.write_text(original.replace(m.old, m.new))
            try:
                passed, secs, tail = run_tests(copy, list(m.tests), args.timeout)
            finally:
                path.write_text(original)
            rows.append((m, "survived" if passed else "killed", secs, "" if passed else tail))
            print(f"{m.name}: {rows[-1][1]} in {secs:.0f}s", flush=True)
    lines = [f"Baseline: the unmutated copy passes {', '.join(f'`{t}`' for t in tests)}.", "",
             "| mutant | file | planted bug | tests run | result | first failure | s |",
             "|---|---|---|---|---|---|---|"]
    for m, result, secs, first in rows:
        shown = ", ".join(Path(t).name for t in m.tests)
        first = first.removeprefix("FAILED ").replace("tests/", "").replace("|", "/").replace("\n", " ")
        cell = f"`{first}`" if first else ""
        lines.append(f"| `{m.name}` | `{m.path}` | {m.what} | {shown} | **{result}** | {cell} | {secs:.0f} |")
    killed = sum(r[1] == "killed" for r in rows)
    lines += ["", f"{killed} of {len(rows)} mutants killed in {time.perf_counter() - t_all:.0f}s "
              f"(pytest -x, one thread per run)."]
    md = "\n".join(lines)
    print("\n" + md)
    summary = {"baseline": "passed", "mutants": len(rows), "killed": killed,
               "survived": [r[0].name for r in rows if r[1] == "survived"],
               "stale": [r[0].name for r in rows if r[1] == "stale"],
               "seconds": round(time.perf_counter() - t_all, 1)}
    if args.only is None and not args.no_record:
        sys.path.insert(0, str(ROOT / "bench"))
        from results import update_section

        update_section("Mutation check", md)
    print(json.dumps(summary))
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
