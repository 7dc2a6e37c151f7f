"""Rounds earn their place: a candidate is served only when people's A/B votes say it is better.

Candidates here are LoRAs put on trial with `Studio.submit_candidate` (the path a finished round takes too),
so each test runs in seconds; the full round path is tested in test_app.py.
"""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from studio import gate

from .conftest import MODELS
from .studio_fixtures import TEST_QUEUE

pytestmark = pytest.mark.heavy

TOKENS: dict[str, str] = {}  # rater name -> rater_token, as the browser keeps it


# ---------------------------------------------------------------- the rule itself


def test_record_counts_wins_losses_and_ties_from_either_side():
    votes = [{"generator_a": "c", "generator_b": "s", "choice": "a"},  # c wins
             {"generator_a": "s", "generator_b": "c", "choice": "b"},  # c wins
             {"generator_a": "s", "generator_b": "c", "choice": "a"},  # c loses
             {"generator_a": "c", "generator_b": "s", "choice": "tie"},
             {"generator_a": "c", "generator_b": "s", "choice": "skip"},  # not counted
             {"generator_a": "c", "generator_b": "x", "choice": "a"}]  # another opponent
    rec = gate.record(votes, "c", "s")
    assert (rec.wins, rec.losses, rec.ties) == (2, 1, 1) and rec.win_rate == pytest.approx(2.5 / 4)
    scored = gate.Record.from_scores([1.0, 0.5, 0.0, 1.0])  # the benchmarks' oracle verdicts, ties half
    assert (scored.wins, scored.losses, scored.ties) == (2, 1, 1)
    with pytest.raises(ValueError):
        gate.Record.from_scores([1.0, 0.7])


def test_rule_promotes_clear_wins_and_rejects_ties_and_losses():
    rule = gate.GateRule(confidence=0.95, margin=0.15, min_votes=6, max_decisive=20, max_votes=40)
    assert gate.decide(gate.Record(5, 0, 0), rule)[0] == "wait"  # too few votes
    assert gate.decide(gate.Record(6, 0, 0), rule)[0] == "promote"
    assert gate.decide(gate.Record(0, 6, 0), rule)[0] == "reject"
    # identical-looking versions: ties alone never promote; people who see no difference reject it once
    # P(more than 20% of votes see one) < 0.05, for a run of ties 0.8^(ties + 1): 13 of them
    assert gate.decide(gate.Record(0, 0, 12), rule)[0] == "wait"
    verdict, why = gate.decide(gate.Record(0, 0, 13), rule)
    assert verdict == "reject" and why.startswith("people see no difference"), why
    assert gate.Record(0, 0, 13).seen().sf(0.2) == pytest.approx(0.8 ** 14)
    assert gate.decide(gate.Record(0, 0, 40), gate.GateRule(max_decisive=20, max_votes=40, min_seen=0))[0] == "reject"
    assert gate.decide(gate.Record(0, 0, 39), gate.GateRule(max_decisive=20, max_votes=40, min_seen=0))[0] == "wait"
    # a third of the votes seeing a difference is plenty: it waits for their direction
    assert gate.decide(gate.Record(3, 3, 12), rule)[0] == "wait"
    # ties say nothing about direction: 8 wins and 2 losses promote with or without 14 ties beside them
    # (counted as half a win and half a loss, the ties pulled P(better) down to 0.89: live loop, rejected)
    assert gate.decide(gate.Record(8, 2, 0), rule)[0] == gate.decide(gate.Record(8, 2, 14), rule)[0] == "promote"
    assert gate.decide(gate.Record(2, 8, 14), rule)[0] == "reject"
    # P(q > 1/2) of Beta(1 + w, 1 + l), checked against the closed form for l = 0: 1 - 2^-(w+1)
    assert gate.Record(6, 0, 0).p_above(0.5) == pytest.approx(1 - 2 ** -7)
    assert gate.Record(6, 0, 9).p_above(0.5) == pytest.approx(1 - 2 ** -7)
    # the win rate people see still counts a tie as half
    assert gate.Record(8, 2, 14).win_rate == pytest.approx(15 / 24)
    assert gate.decide(gate.Record(20, 20, 0), rule)[0] == "reject"  # max_votes reached, or confidently not better
    # undecided 12-8 (P(better) 0.81): ends after 20 votes that saw a difference, however many ties came between
    assert gate.decide(gate.Record(11, 8, 15), rule)[0] == "wait"
    verdict, why = gate.decide(gate.Record(12, 8, 15), rule)
    assert verdict == "reject" and why.startswith("inconclusive after 35 A/B votes"), why
    with pytest.raises(ValueError, match="max_decisive"):
        gate.GateRule(max_decisive=65, max_votes=64)


def test_bradley_terry_orders_versions_and_anchors_base():
    rng = np.random.default_rng(0)
    true = {"base": 0.0, "r1": 1.0, "r2": -1.0}
    votes = []
    for _ in range(400):
        i, j = rng.choice(list(true), 2, replace=False)
        p = 1 / (1 + math.exp(true[j] - true[i]))
        votes.append({"generator_a": i, "generator_b": j, "choice": "a" if rng.random() < p else "b"})
    bt = gate.bradley_terry(votes, list(true), anchor="base")
    assert bt["base"]["strength"] == 0.0
    assert bt["r1"]["low"] < 1.0 < bt["r1"]["high"] and bt["r2"]["low"] < -1.0 < bt["r2"]["high"]
    assert bt["r1"]["low"] > 0 > bt["r2"]["high"]


# ---------------------------------------------------------------- through the studio


def _lora(tmp, scale: float | None, nan: bool = False):
    """A diffusers-format LoRA for the toy LCM: B = scale * noise (None: B = 0, i.e. the base itself)."""
    from diffusers import LatentConsistencyModelPipeline

    from rlcm import lora as lora_utils

    pipe = LatentConsistencyModelPipeline.from_pretrained(MODELS / "toy-lcm")
    torch.manual_seed(0)  # peft draws A from the global generator
    cfg = lora_utils.add_lora(pipe.unet, rank=8, alpha=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.full_like(p, float("nan")) if nan else
                        torch.zeros_like(p) if scale is None else scale * torch.randn(p.shape, generator=g))
    return lora_utils.save_lora(type(pipe), pipe.unet, cfg, tmp)


@pytest.fixture
def studio(tmp_path):
    if not (MODELS / "toy-lcm").exists():
        pytest.skip("toy models not built")
    from studio.runtime import Studio
    from studio.settings import StudioSettings

    s = StudioSettings(model=str(MODELS / "toy-lcm"), clip=str(MODELS / "toy-clip"), data_dir=tmp_path / "studio",
                       admin_password="pw", snapshot_every_s=0, compare_prompts=4, queue_size=2, ab_fraction=1.0,
                       auto_round_every=0, confirm_prompts=0,  # the fidelity confirmation has its own test
                       **TEST_QUEUE)
    st = Studio(s, start_workers=False)
    yield st
    st.close()


def _vote_ab(studio, prefer, n: int, rater: str = "tester") -> int:
    """Vote on up to n A/B pairs as the UI does; `prefer(gen_a, gen_b)` returns a, b or tie. Returns votes cast."""
    cast = 0
    for i in range(n):
        cand = studio.generator.candidate
        if cand is None:
            break
        p = studio.next_pair()
        ga, gb = (studio.store.get_sample(p[k])["generator"] for k in ("a", "b"))
        assert {ga, gb} == {cand, studio.generator.version}, "with ab_fraction 1 every pair is an A/B pair"
        a, b = (studio.store.get_sample(p[k]) for k in ("a", "b"))
        assert a["prompt"] == b["prompt"] and a["seed"] == b["seed"]  # same prompt and seed
        row = studio.vote(studio.rater(rater, TOKENS.get(rater)), p["a"], p["b"], prefer(ga, gb, cand), f"{rater}-{i}")
        TOKENS[rater] = row["rater_token"]
        cast += 1
    return cast


def test_people_promote_a_candidate_they_prefer(studio, tmp_path):
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "good", 0.05))
    assert verdict == "candidate", reason
    assert studio.generator.version == "base" and studio.generator.candidate == version  # not served yet
    n = _vote_ab(studio, lambda ga, gb, cand: "a" if ga == cand else "b", 20)
    assert studio.generator.version == version and studio.generator.candidate is None
    assert n == 6  # min_votes clear wins are enough at 95% confidence
    row = studio.store.get_round(int(version.removeprefix("round-")))
    assert row["verdict"] == "promoted" and "people's votes" in row["verdict_reason"]
    board = {r["version"]: r for r in studio.leaderboard()}
    assert board[version]["votes"] == 6 and board[version]["win_low"] > 0.5 and board[version]["status"] == "served"
    # the next round starts from the promoted version, not from base
    served, init = studio._start_adapter()
    assert served == version and init is not None and init.exists()


def test_only_same_seed_votes_count_in_a_trial(studio, tmp_path):
    """The gate's trial counts A/B pairs (the two versions of one image): a vote on the candidate against the
    served version on two seeds (an earlier-version pair, or one from an export) goes to the leaderboard, not to
    the trial, and cannot promote it."""
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "good", 0.05))
    assert verdict == "candidate", reason
    s = studio.settings
    for i in range(8):
        prompt, ids = "a red circle", {}
        for v, seed in (("base", 100 + 2 * i), (version, 101 + 2 * i)):
            im = studio.generator.generate([prompt], [seed], version=v)[0][0]
            ids[v] = studio.store.add_sample(im, prompt, seed, s.steps, s.guidance, generator=v)
        row = studio.vote(studio.rater("crossseed", TOKENS.get("crossseed")), ids[version], ids["base"], "a",
                          f"cross-{i}")
        TOKENS["crossseed"] = row["rater_token"]
    assert studio.generator.candidate == version and studio.generator.version == "base"  # 8 wins, none counted
    assert "0 wins, 0 losses, 0 ties" in studio.trial(), studio.trial()
    board = {r["version"]: r for r in studio.leaderboard()}
    assert board[version]["votes"] == 8  # people's cross-version votes still rank the versions
    assert _vote_ab(studio, lambda ga, gb, cand: "a" if ga == cand else "b", 20) == 6  # A/B votes decide it
    assert studio.generator.version == version


def test_the_next_round_starts_from_the_weights_people_were_shown(studio, tmp_path):
    """A round whose keeper handed over an earlier epoch leaves its trainer checkpoint at the last epoch: the next
    round must start from the handed-over LoRA that people voted for, not from that checkpoint."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import load_file, save_file

    shown = _lora(tmp_path / "good", 0.05)
    version, verdict, reason = studio.submit_candidate(shown)
    assert verdict == "candidate", reason
    later = load_file(_lora(tmp_path / "later", 0.2) / "pytorch_lora_weights.safetensors")  # a later epoch's
    ck = studio.settings.data_dir / "rounds" / version.removeprefix("round-") / "checkpoint"
    ck.mkdir(parents=True)
    save_file({k.removeprefix("unet."): v for k, v in later.items()}, ck / "adapter.safetensors")
    _vote_ab(studio, lambda ga, gb, cand: "a" if ga == cand else "b", 20)
    assert studio.generator.version == version
    served, init = studio.rounds.start_adapter()  # what the round runner starts a new round from
    assert served == version
    start = convert_state_dict_to_diffusers(load_file(init))
    want = {k.removeprefix("unet."): v for k, v in load_file(shown / "pytorch_lora_weights.safetensors").items()}
    # bit for bit: the next round's keeper finds its start's evaluation renders by the digest of these weights
    assert start.keys() == want.keys() and all(torch.equal(start[k], want[k]) for k in want)


def _label_ordinary(studio, n: int) -> None:
    """n ordinary pairs voted with the warm-colours taste (no candidate on trial, so none is an A/B pair)."""
    from PIL import Image

    from feedback.raters import warm_colours

    for i in range(n):
        p = studio.next_pair()
        a, b = (Image.open(studio.store.image_path(p[k])) for k in ("a", "b"))
        row = studio.vote(studio.rater("labeller", TOKENS.get("labeller")), p["a"], p["b"],
                          warm_colours(a, b, p["prompt"]), f"labeller-{i}")
        TOKENS["labeller"] = row["rater_token"]


def _wait_round(studio, until, timeout: float = 600.0) -> dict:
    """The progress once `until` holds; fails at once if the round ends (done, failed, cancelled) short of it."""
    p = studio.rounds.wait_for(lambda p: until(p) or p["state"] in ("done", "failed", "cancelled"), timeout)
    if p is not None and until(p):
        return p
    raise AssertionError(f"round did not get there: {p or studio.rounds.snapshot()}")


def test_a_round_started_during_a_trial_trains_from_the_candidate_and_waits_for_its_verdict(studio, tmp_path):
    """Rounds don't idle while people vote on a candidate: the next one trains from the candidate at once, and
    reaches the vote only if people promote its parent; if they reject it, the round ahead is dropped."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import load_file

    studio.settings.round_epochs, studio.settings.round_prompts = 2, 4
    studio.settings.round_lr, studio.settings.round_eval_prompts = 1e-3, 16
    # the synthetic candidate is ~1.6 points of fidelity below the base on the round's 16 prompts, short of the
    # keeper's rule (a standard error above -2): its round must move at the full rate from its first epoch to pass
    # it (warmed up, or from a candidate further down, it stays short and is rejected)
    studio.settings.round_lr_warmup = 0
    # ... and that balance is the plain guard's: with the swap hinge too, its 2 epochs stay short (this test is
    # about the round trained ahead, not about the guard)
    studio.settings.swap_guard = 0.0
    _label_ordinary(studio, 10)
    good = _lora(tmp_path / "good", 0.01)
    parent, verdict, reason = studio.submit_candidate(good)
    assert verdict == "candidate", reason
    rid = studio.start_round(by="test", force=True)
    row = studio.store.get_round(rid)
    assert row["config"]["init_version"] == parent
    start = convert_state_dict_to_diffusers(load_file(row["config"]["init_lora"]))
    want = {k.removeprefix("unet."): v for k, v in load_file(good / "pytorch_lora_weights.safetensors").items()}
    # bit for bit: the next round's keeper finds its start's evaluation renders by the digest of these weights
    assert start.keys() == want.keys() and all(torch.equal(start[k], want[k]) for k in want)
    # trained, it waits: its parent is still on trial, and it is neither a candidate nor shown
    p = _wait_round(studio, lambda p: p.get("waiting_on") is not None)
    assert p["waiting_on"] == parent  # what the live loop reads: this round needs votes, not time
    assert studio.generator.candidate == parent and studio.generator.checking is None
    assert studio.store.get_round(rid)["verdict"] is None and f"round-{rid}" not in studio.versions()
    _vote_ab(studio, lambda ga, gb, cand: "a" if ga == cand else "b", 20)  # people promote the parent
    assert studio.generator.version == parent
    p = _wait_round(studio, lambda p: p["state"] in ("done", "failed"))
    assert p["state"] == "done" and p["verdict"] == "candidate" and p["waiting_on"] is None, p
    assert studio.generator.candidate == f"round-{rid}"  # now on trial against its parent, the served version

    # a round ahead of a candidate that people reject is cancelled, never shown; the next one starts from
    # the served version
    child = f"round-{rid}"
    ahead = studio.start_round(by="test", force=True)
    assert studio.store.get_round(ahead)["config"]["init_version"] == child
    _vote_ab(studio, lambda ga, gb, cand: "b" if ga == cand else "a", 20, rater="tester2")  # people reject it
    assert studio.generator.candidate is None and studio.generator.version == parent
    p = _wait_round(studio, lambda p: p["state"] in ("done", "failed", "cancelled"))
    row = studio.store.get_round(ahead)
    assert row["status"] == "cancelled" or (row["verdict"] == "rejected" and "not served" in row["verdict_reason"]), row
    assert f"round-{ahead}" not in studio.versions()
    nxt = studio.start_round(by="test", force=True)
    assert studio.store.get_round(nxt)["config"]["init_version"] == parent
    studio.cancel_round()


def test_people_reject_a_candidate_that_looks_like_the_served_one(studio, tmp_path):
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "meh", 0.05))
    assert verdict == "candidate", reason
    n = _vote_ab(studio, lambda ga, gb, cand: "tie", 90)
    # all ties: nobody sees a difference, and the trial ends after 13 votes, not at its 64-vote limit
    assert n == 13
    assert studio.generator.candidate is None and studio.generator.version == "base"
    row = studio.store.get_round(int(version.removeprefix("round-")))
    assert row["verdict"] == "rejected" and "people see no difference" in row["verdict_reason"]
    assert version not in studio.versions()
    with pytest.raises(ValueError, match="rejected"):
        studio.activate(version)


def test_the_base_itself_and_a_nan_lora_are_rejected_before_any_vote(studio, tmp_path):
    same, verdict, reason = studio.submit_candidate(_lora(tmp_path / "same", None))
    assert verdict == "rejected" and "no visible change" in reason
    broken, verdict, reason = studio.submit_candidate(_lora(tmp_path / "nan", 0.05, nan=True))
    assert verdict == "rejected" and "non-finite" in reason
    assert studio.generator.candidate is None and studio.generator.version == "base"
    assert studio.versions() == ["base"]
    assert studio.store.counts()["comparisons"] == 0


def test_a_candidate_that_loses_prompt_fidelity_on_new_prompts_is_rejected_before_any_vote(studio, tmp_path,
                                                                                           monkeypatch):
    from studio import checks

    studio.settings.confirm_prompts = 64

    def recomputed(version: str, lora, n: int, n_prompts: int = 64) -> np.ndarray:
        """The change on the round's own first `n` images (its id picks prompts and seeds), scored by the checker."""
        rid = int(version.removeprefix("round-"))
        prompts, seeds = (x[:n] for x in checks.confirmation_set(n_prompts, draw=rid))
        studio.generator.set_candidate(version, lora)
        base, tuned = (checks.image_fidelity(studio.generator.generate(prompts, seeds, version=v)[0], prompts)
                       for v in ("base", version))
        studio.generator.set_candidate(None)
        return 100 * (tuned - base)

    loud = _lora(tmp_path / "loud", 0.4)
    version, verdict, reason = studio.submit_candidate(loud)
    # a collapse is settled by the first look, on a quarter of the 128 images
    assert verdict == "rejected" and "prompt fidelity on 32 new images" in reason, reason
    change = studio.store.get_round(int(version.removeprefix("round-")))["metrics"]["fidelity_confirmed"]
    rid = int(version.removeprefix("round-"))
    prompts, seeds = checks.confirmation_set(64, draw=rid)
    other = checks.confirmation_set(64, draw=rid + 1)
    assert other[0] != prompts and not set(other[1]) & set(seeds)  # the next round is confirmed on new images
    assert change["n"] == 32 and change["change_points"] == pytest.approx(recomputed(version, loud, 32).mean())
    assert change["change_points"] + checks.CONFIRM_EARLY_SE * change["se_points"] < -checks.KEEP_FIDELITY_DROP
    assert studio.generator.candidate is None and studio.versions() == ["base"]
    # a gentle LoRA passes the same check and goes to the vote, its change recorded beside the round
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "gentle", 0.02))
    assert verdict == "candidate", reason
    ok = studio.store.get_round(int(version.removeprefix("round-")))["metrics"]["fidelity_confirmed"]
    assert ok["change_points"] >= -checks.KEEP_FIDELITY_DROP + checks.CONFIRM_MARGIN_SE * ok["se_points"]
    assert f"pts ({ok['n']} images)" in studio.train_view()[1][0]["fidelity vs base, new prompts"]
    studio.reject(version, "test")
    # unsettled by its early looks, a confirmation renders the rest: the same round's images, each look adding to
    # the last; its standard error is over the 16 prompts' mean changes (their 2 seeds are not independent)
    studio.settings.confirm_prompts = 16
    monkeypatch.setattr(checks, "CONFIRM_EARLY_SE", float("inf"))
    version, verdict, reason = studio.submit_candidate(loud)
    assert verdict == "rejected" and "prompt fidelity on 32 new images" in reason, reason
    change = studio.store.get_round(int(version.removeprefix("round-")))["metrics"]["fidelity_confirmed"]
    d = recomputed(version, loud, 32, 16)
    assert change["n"] == 32 and change["change_points"] == pytest.approx(d.mean())
    per_prompt = d.reshape(16, 2).mean(axis=1)  # confirmation_set lists each prompt's two seeds side by side
    assert change["se_points"] == pytest.approx(per_prompt.std(ddof=1) / np.sqrt(16))


def test_a_fidelity_change_passes_the_confirmation_only_when_it_is_surely_within_the_limit():
    from studio import checks

    limit = checks.KEEP_FIDELITY_DROP
    # just inside the limit on a precise measurement: goes to the vote
    assert checks.confirm_reason({"change_points": -limit + 0.1, "se_points": 0.05, "n": 4096}) is None
    # the same figure measured with a standard error of 1 point could well be beyond it: rejected
    noisy = checks.confirm_reason({"change_points": -limit + 0.1, "se_points": 1.0, "n": 256})
    assert noisy is not None and "-1.9 ± 1.0 points" in noisy and "= -1.0" in noisy, noisy
    assert checks.confirm_reason({"change_points": 0.5, "se_points": 1.0, "n": 256}) is None
    assert checks.confirm_reason({"change_points": -limit - 0.1, "se_points": 0.0, "n": 256}) is not None
    # an early look, on a quarter or half of the images, settles it only when it is 2 standard errors or more from
    # the line
    assert checks.confirmation_looks(256) == [128, 256, 512] and checks.confirmation_looks(64) == [32, 64, 128]
    assert checks.confirmation_looks(2) == [2, 4] and checks.confirmation_looks(1) == [2]
    assert checks.confirm_settled({"change_points": 1.5, "se_points": 1.6, "n": 128})  # passes at once
    assert checks.confirm_settled({"change_points": -5.5, "se_points": 1.6, "n": 128})  # fails at once
    assert checks.confirm_reason({"change_points": -5.5, "se_points": 1.6, "n": 128}) is not None
    for unsettled in (0.5, -0.5, -2.0, -4.5):  # within 3.2 points of -2: the next look decides
        assert not checks.confirm_settled({"change_points": unsettled, "se_points": 1.6, "n": 128})
    assert not checks.confirm_settled({"change_points": 0.0, "se_points": 0.0, "n": 128})  # no spread measured


def test_a_fidelity_change_counts_a_prompt_once_however_many_seeds_show_it():
    """Two seeds of one prompt that lose the same attribute are one piece of evidence, not two: the standard error
    is over prompts (cluster-robust), so a loss that hits whole prompts is not passed as precise."""
    from studio import checks

    prompts = [f"prompt {i}" for i in range(50) for _ in (0, 1)]
    rng = np.random.default_rng(0)
    per_prompt = rng.choice([0.0, -1 / 3], size=50)  # a prompt keeps its colour, or loses it on both seeds
    base = np.ones(100)
    alike = checks.fidelity_change(base, base + np.repeat(per_prompt, 2), prompts)
    assert alike["n"] == 100 and alike["change_points"] == pytest.approx(100 * per_prompt.mean())
    assert alike["se_points"] == pytest.approx(100 * per_prompt.std(ddof=1) / np.sqrt(50))  # 50 pieces, not 100
    # the same losses spread over independent images (each prompt once) are twice the evidence
    spread = checks.fidelity_change(base, base + np.repeat(per_prompt, 2), [f"p{i}" for i in range(100)])
    assert spread["se_points"] == pytest.approx(alike["se_points"] * np.sqrt(49 / 99), rel=1e-6)
    # one prompt alone tells nothing about the spread between prompts: its change can't pass the confirmation
    single = checks.fidelity_change(np.ones(2), np.ones(2), ["only", "only"])
    assert single["se_points"] == float("inf") and checks.confirm_reason(single) is not None


def _handed_over(studio, lora, epochs: int, served: int) -> tuple[int, Path]:
    """A finished round in the store, as the round runner leaves it before its checks: `lora` is its LoRA."""
    rid = studio.store.create_round({"by": "test", "init_version": "base", "init_lora": None})
    dst = studio.settings.data_dir / "rounds" / str(rid) / "lora"
    shutil.copytree(lora, dst)
    studio.store.update_round(rid, status="done", lora_path=str(dst), metrics={"epochs": epochs, "epoch_served": served})
    return rid, dst


def test_a_round_that_loses_fidelity_on_new_prompts_steps_back_to_an_earlier_kept_epoch(studio, tmp_path):
    """The keeper chose the handed-over epoch on the round's own 32 images; when the confirmation on new prompts
    rejects it, the round is checked again at the earlier epoch its keeper also kept, and that one goes to the
    vote (its LoRA now the round's), or the round is rejected with both reasons."""
    from safetensors.torch import load_file

    studio.settings.confirm_prompts = 64
    loud, gentle = _lora(tmp_path / "loud", 0.4), _lora(tmp_path / "gentle", 0.02)
    rid, dst = _handed_over(studio, loud, epochs=8, served=6)
    verdict, reason = studio.rounds.on_done(rid, dst, None, (3, gentle))  # what the round runner calls
    assert verdict == "candidate" and studio.generator.candidate == f"round-{rid}", reason
    m = studio.store.get_round(rid)["metrics"]
    assert m["epoch_served"] == 3 and m["stepped_back_from"]["epoch"] == 6
    assert "prompt fidelity on 32 new images" in m["stepped_back_from"]["reason"]  # settled at the first look
    assert m["fidelity_confirmed"]["change_points"] >= -2  # the earlier epoch's confirmation
    want = load_file(gentle / "pytorch_lora_weights.safetensors")
    got = load_file(dst / "pytorch_lora_weights.safetensors")  # served from here once people promote it
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert "3 of 8 (epoch 6 lost prompt fidelity" in studio.train_view()[1][0]["epochs"]
    studio.reject(f"round-{rid}", "test")
    # both epochs too far from the base: rejected, saying why for each
    rid, dst = _handed_over(studio, loud, epochs=8, served=6)
    verdict, reason = studio.rounds.on_done(rid, dst, None, (3, _lora(tmp_path / "loud2", 0.3)))
    assert verdict == "rejected" and reason.count("prompt fidelity on 32 new images") == 2 and "at epoch 3" in reason
    assert studio.generator.candidate is None and studio.versions() == ["base"]


def test_no_vote_sees_a_version_before_its_checks_pass(studio, tmp_path, monkeypatch):
    """While the confirmation renders (seconds to a minute), the Rate queue must not show the version in A/B
    pairs, or votes could promote a round its checks then reject (seen in a live-loop run)."""
    from studio import checks

    studio.settings.confirm_prompts = 4
    monkeypatch.setattr(checks, "confirmation_looks", lambda n: [2 * n])  # one look, before any vote (see below)
    seen = []
    real = checks.confirm_reason

    def during_the_check(change):  # the real rule, called while the version is loaded for its checks
        pair = studio.queue.make_pair()
        seen.append((studio.generator.candidate, studio.generator.checking,
                     {studio.store.get_sample(pair[k])["generator"] for k in ("a", "b")}))
        return real(change)

    monkeypatch.setattr(checks, "confirm_reason", during_the_check)
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "loud", 0.4))
    assert verdict == "rejected" and seen == [(None, version, {"base"})]
    assert studio.generator.candidate is None and studio.generator.checking is None
    seen.clear()
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "gentle", 0.02))
    assert seen == [(None, version, {"base"})]
    assert verdict == "candidate" and studio.generator.candidate == version  # on trial once it passed
    pair = studio.queue.make_pair()  # ab_fraction 1: now every pair is an A/B pair
    assert {studio.store.get_sample(pair[k])["generator"] for k in ("a", "b")} == {"base", version}


def test_a_confirmation_unsettled_by_its_first_look_goes_on_while_people_vote(studio, tmp_path, monkeypatch):
    """When the first look leaves the fidelity confirmation unsettled, the trial opens and the other looks render
    while people vote: their votes count, but promote the candidate only once the looks pass (meanwhile, once
    they would promote it, the queue shows ordinary pairs: more A/B votes could not change the outcome); failing
    looks reject it however people voted. A restart in the middle rejects it."""
    from studio import checks
    from studio.runtime import Studio

    studio.settings.confirm_prompts = 16
    monkeypatch.setattr(checks, "confirm_settled", lambda change: False)  # every look is taken
    real, during = checks.fidelity_change, []

    def look(base, candidate, prompts):
        if studio.generator.candidate is not None:  # a later look, rendered while on trial: people vote meanwhile
            cand = studio.generator.candidate
            n = 0 if during else _vote_ab(studio, lambda ga, gb, c: "a" if ga == c else "b", 6, rater=f"{cand}-v")
            pair = studio.next_pair()
            shown = {studio.store.get_sample(pair[k])["generator"] for k in ("a", "b")}
            during.append((len(prompts), n, studio.generator.version, studio.generator.candidate == cand,
                           cand in shown, studio.trial()))
        return real(base, candidate, prompts)

    monkeypatch.setattr(checks, "fidelity_change", look)
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "gentle", 0.02))
    assert verdict == "promoted" and studio.generator.version == version, (verdict, reason)
    # looks 2 and 3: 6 clear wins would promote it, but it stays on trial, and with ab_fraction 1 the pairs are
    # ordinary ones again
    assert [d[:5] for d in during] == [(16, 6, "base", True, False), (32, 0, "base", True, False)], during
    assert "promoted once its prompt fidelity on new prompts is confirmed" in during[0][5]
    row = studio.store.get_round(int(version.removeprefix("round-")))
    assert row["metrics"]["fidelity_confirmed"]["n"] == 32 and "confirming" not in row["metrics"]
    assert row["verdict_reason"].startswith("people's votes")
    during.clear()
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "loud", 0.4))  # people like it; fidelity no
    assert verdict == "rejected" and "prompt fidelity on 32 new images" in reason and "while on trial" in reason
    assert len(during) == 2 and studio.generator.candidate is None and studio.generator.version != version
    # stopped between two looks: the restarted studio does not put it back on trial unconfirmed
    monkeypatch.setattr(checks, "fidelity_change", real)
    rid = studio.store.create_round({"by": "test", "init_version": studio.generator.version, "init_lora": None})
    studio.store.update_round(rid, status="done", lora_path=str(tmp_path / "gentle"), verdict="candidate",
                              metrics={"confirming": True})
    studio.close()
    again = Studio(studio.settings, start_workers=False)
    try:
        row = again.store.get_round(rid)
        assert again.generator.candidate is None
        assert row["verdict"] == "rejected" and "before its prompt fidelity confirmation finished" in row["verdict_reason"]
    finally:
        again.close()


def test_the_warm_up_scores_the_base_on_the_next_rounds_confirmation_while_no_round_trains(studio, tmp_path,
                                                                                             monkeypatch):
    """Before the first round the studio renders the base's half of that round's confirmation (its first look
    at once, the rest only while no round trains), so the candidate's looks render the candidate alone; the
    change they report is the one recomputed from scratch."""
    from studio import checks
    from studio.rounds import RoundRunner

    studio.settings.confirm_prompts = 16  # 32 images: looks at 8, 16, 32
    monkeypatch.setattr(checks, "confirm_settled", lambda change: False)  # every look is taken
    real, base_seeds = studio.generator.generate, []

    def generate(prompts, seeds, version=None):
        if version == "base":
            base_seeds.extend(seeds)
        return real(prompts, seeds, version=version)

    monkeypatch.setattr(studio.generator, "generate", generate)
    prompts, seeds = checks.confirmation_set(16, draw=studio.store.next_round_id())
    with monkeypatch.context() as m:  # a round trains: the first look's images only
        m.setattr(RoundRunner, "running", property(lambda self: True))
        studio._warm_up()
    assert base_seeds == seeds[:8]
    studio._warm_up()  # no round: the rest, none twice
    assert base_seeds == seeds
    base_seeds.clear()
    version, verdict, reason = studio.submit_candidate(_lora(tmp_path / "gentle", 0.02))
    assert verdict in ("candidate", "promoted"), reason
    assert not set(base_seeds) & set(seeds)  # the looks rendered no base image again
    change = studio.store.get_round(int(version.removeprefix("round-")))["metrics"]["fidelity_confirmed"]
    studio.generator.set_candidate(version, tmp_path / "gentle", trial=False)
    tuned, base = (checks.image_fidelity(real(prompts, seeds, version=v)[0], prompts) for v in (version, "base"))
    assert change["n"] == 32 and change["change_points"] == pytest.approx(100 * (tuned - base).mean())


def test_a_round_that_fails_a_look_on_trial_steps_back_as_a_new_version(studio, tmp_path, monkeypatch):
    """A round that loses prompt fidelity in a look taken while people vote is rejected, and its earlier kept
    epoch goes on trial as a new round: the votes cast on the failed weights don't count for it."""
    from safetensors.torch import load_file

    from studio import checks

    studio.settings.confirm_prompts = 16
    monkeypatch.setattr(checks, "confirm_settled", lambda change: False)  # every look is taken
    real, votes = checks.fidelity_change, {}

    def look(base, candidate, prompts):
        cand = studio.generator.candidate
        if cand is not None and cand not in votes:  # on trial: people vote for it between two looks
            votes[cand] = _vote_ab(studio, lambda ga, gb, c: "a" if ga == c else "b", 3, rater=f"{cand}-v")
        return real(base, candidate, prompts)

    monkeypatch.setattr(checks, "fidelity_change", look)
    loud, gentle = _lora(tmp_path / "loud", 0.4), _lora(tmp_path / "gentle", 0.02)
    rid, dst = _handed_over(studio, loud, epochs=8, served=6)
    verdict, reason = studio.rounds.on_done(rid, dst, None, (3, gentle))  # what the round runner calls
    new = f"round-{rid + 1}"
    assert verdict == "rejected" and "prompt fidelity on 32 new images" in reason and "while on trial" in reason
    assert f"its kept epoch 3 is checked again as {new}: candidate" in reason, reason
    assert votes == {f"round-{rid}": 3, new: 3}  # both were on trial, one after the other
    assert studio.generator.candidate == new and studio.generator.version == "base"
    old = studio.store.get_round(rid)
    assert old["verdict"] == "rejected" and old["metrics"]["stepped_back_to"] == new
    assert f"checked again as {new}" in old["verdict_reason"]
    row = studio.store.get_round(rid + 1)
    assert row["verdict"] == "candidate" and row["config"]["step_back_of"] == rid
    assert row["config"]["init_version"] == "base"  # from where the failed round started
    assert row["metrics"]["epoch_served"] == 3 and row["metrics"]["stepped_back_from"]["round"] == rid
    assert row["metrics"]["fidelity_confirmed"]["n"] == 32
    want = load_file(gentle / "pytorch_lora_weights.safetensors")
    got = load_file(Path(row["lora_path"]) / "pytorch_lora_weights.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # only the 3 votes cast on the new round's own weights count in its trial, not the 3 wins of the failed one
    rec = gate.record(studio.store.comparisons(between=(new, "base"), same_seed=True), new, "base")
    assert (rec.wins, rec.losses, rec.ties) == (3, 0, 0)
    # a step back happens once: the new round has no earlier epoch to fall back to
    studio.reject(new, "test")
    rid, dst = _handed_over(studio, loud, epochs=8, served=6)
    verdict, reason = studio.rounds.on_done(rid, dst, None, (3, _lora(tmp_path / "loud2", 0.4)))
    assert verdict == "rejected" and f"checked again as round-{rid + 1}: rejected" in reason, reason
    assert studio.generator.candidate is None and len(studio.store.rounds()) == rid + 1


def test_a_restart_keeps_the_pending_candidate_and_settings(studio, tmp_path):
    from studio.runtime import Studio

    version, verdict, _ = studio.submit_candidate(_lora(tmp_path / "good", 0.05))
    _vote_ab(studio, lambda ga, gb, cand: "a" if ga == cand else "b", 3)  # not yet decided
    assert studio.generator.candidate == version
    # a round that finished training but stopped in its checks (or waiting on its parent's trial)
    stopped = studio.store.create_round({"by": "test", "init_version": version, "init_lora": None})
    studio.store.update_round(stopped, status="done", lora_path=str(tmp_path / "good"))
    studio.close()
    again = Studio(studio.settings, start_workers=False)
    try:
        assert again.generator.candidate == version and again.generator.version == "base"
        row = again.store.get_round(stopped)  # never put to a vote unchecked: rejected, saying why
        assert row["verdict"] == "rejected" and "before its checks finished" in row["verdict_reason"]
        _vote_ab(again, lambda ga, gb, cand: "a" if ga == cand else "b", 20, rater="tester2")
        assert again.generator.version == version  # the votes before the restart counted too
    finally:
        again.close()


def test_a_restart_after_a_crash_while_storing_a_submitted_lora_fails_it_and_trains_nothing(studio, tmp_path,
                                                                                              monkeypatch):
    """A LoRA trained elsewhere (a submission, a step back's earlier epoch) is stored as a finished round in three
    steps; a crash between them leaves a pending round, which a restart must not train as an ordinary round."""
    from studio import runtime
    from studio.runtime import Studio

    def power_cut(dst, src):
        (Path(dst) / "partial.bin").parent.mkdir(parents=True, exist_ok=True)
        (Path(dst) / "partial.bin").write_bytes(b"half a copy")
        raise OSError("power cut")

    monkeypatch.setattr(runtime, "replace_lora", power_cut)
    with pytest.raises(OSError, match="power cut"):
        studio.submit_candidate(_lora(tmp_path / "good", 0.05))
    (row,) = studio.store.rounds()
    assert row["status"] == "pending" and studio.generator.candidate is None
    studio.close()
    again = Studio(studio.settings, start_workers=False)
    try:
        row = again.store.get_round(row["id"])
        assert row["status"] == "failed" and "stopped while storing" in row["error"]
        assert not (again.settings.data_dir / "rounds" / str(row["id"])).exists()  # the partial copy is gone
        again._resume_interrupted()  # what a start with workers does next
        assert not again.rounds.running and again.store.get_round(row["id"])["status"] == "failed"
        assert again.generator.candidate is None and again.generator.version == "base"
    finally:
        again.close()


def test_the_served_lora_exports_for_diffusers_and_pushes_to_its_repos(studio, tmp_path):
    import zipfile

    from diffusers import LatentConsistencyModelPipeline

    from .hub_fake import FakeHfApi

    with pytest.raises(ValueError, match="base model has no LoRA"):
        studio.export_lora()
    version, _, _ = studio.submit_candidate(_lora(tmp_path / "good", 0.05))
    _vote_ab(studio, lambda ga, gb, cand: "a" if ga == cand else "b", 20)
    assert studio.generator.version == version
    zipped = studio.export_lora()
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(zipped).extractall(folder)
    card = (folder / "README.md").read_text()
    assert "toy-lcm" in card and "100.0%" in card  # the base, and people's win rate over it: 6 of 6 A/B votes
    # diffusers alone: the export makes the same images as the studio's served version
    pipe = LatentConsistencyModelPipeline.from_pretrained(MODELS / "toy-lcm")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(folder))
    mine = pipe(["a red circle on a blue background"], num_inference_steps=studio.settings.steps,
                guidance_scale=studio.settings.guidance, generator=torch.Generator().manual_seed(3)).images[0]
    served = studio.generator.generate(["a red circle on a blue background"], [3])[0][0]
    assert np.abs(np.asarray(mine, dtype=float) - np.asarray(served, dtype=float)).max() <= 1
    api = FakeHfApi()
    studio.push("lora", "me/lora", api=api)
    with pytest.raises(ValueError, match="no reward model"):
        studio.push("reward_model", "me/rm", api=api)
    studio.push("dataset", "me/prefs", api=api)
    assert api.repos["me/lora"]["repo_type"] in (None, "model") and api.repos["me/prefs"]["repo_type"] == "dataset"
    with pytest.raises(ValueError, match="valid"):
        studio.push("everything", "me/x", api=api)


def _dark_round(tmp_path, epochs: int, lr: float, init_lora: str | None = None, eval_prompts: int = 8,
                renders=None):
    """A toy round on a reward that pays for darkness, with a FidelityKeeper saving every epoch, then picking:
    (trainer, keeper, {epoch: the LoRA's peft state after it}, loaded safetensors files in diffusers form)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import load_file

    from rlcm.lora import lora_state
    from rlcm.trainer import RLCMConfig, RLCMTrainer
    from studio.rounds import FidelityKeeper

    cfg = RLCMConfig(model=str(MODELS / "toy-lcm"), prompt_set="toy", epochs=epochs, prompts_per_epoch=2,
                     images_per_prompt=4, sample_batch_size=8, train_batch_size=8, eval_every=0, eval_prompts=eval_prompts,
                     lr=lr, output_dir=str(tmp_path / "round"), checkpoint_every=100, seed=3, init_lora=init_lora)
    dark = lambda images, prompts: -np.array([np.asarray(im, np.float32).mean() for im in images])  # noqa: E731
    trainer = RLCMTrainer(cfg, reward_fn=dark)
    states = {}
    trainer.callbacks.append(lambda e: e["type"] == "epoch" and states.__setitem__(
        e["epoch"], convert_state_dict_to_diffusers({k: v.detach().clone() for k, v in lora_state(trainer.unet).items()})))
    keeper = FidelityKeeper(trainer, tmp_path / "kept", every=1, renders=renders)
    trainer.callbacks.append(keeper)
    trainer.train()
    keeper.select()
    load = lambda d: {k.removeprefix("unet."): v for k, v in load_file(d / "pytorch_lora_weights.safetensors").items()}  # noqa: E731
    return trainer, keeper, states, load


def test_a_round_hands_over_its_last_epoch_that_kept_prompt_fidelity(tmp_path):
    """A reward that pays for darkness wrecks the toy's prompt fidelity within a few epochs at this step size:
    the keeper evaluates its saved epochs from the last back and hands over the first whose fidelity, paired image
    by image with the base model's (measured with the adapters off), is a standard error or more above
    KEEP_FIDELITY_DROP points below it: the latest such epoch. The epochs before it are never evaluated."""
    from studio import checks

    trainer, keeper, states, load = _dark_round(tmp_path, epochs=8, lr=0.005, eval_prompts=32)
    ev = {r["epoch"]: r for r in trainer.history if "eval_fidelity" in r}
    # the LoRA starts at zero, so the start is the base: the same as with adapters off
    base = trainer.evaluate(base=True)
    assert keeper.base == base["eval_fidelity"] == ev[0]["eval_fidelity"]
    assert keeper.base_images == base["eval_fidelity_images"] and len(base["eval_fidelity_images"]) == 32

    def margin(e):  # points above the line -KEEP_FIDELITY_DROP + 1 standard error (one seed: images independent)
        d = 100 * (np.array(ev[e]["eval_fidelity_images"]) - np.array(base["eval_fidelity_images"]))
        return d.mean() + checks.KEEP_FIDELITY_DROP - d.std(ddof=1) / np.sqrt(len(d))

    kept = keeper.kept["epoch"]
    assert set(ev) == {0, *range(kept, 9)}, sorted(ev)  # from the last back, no further than the kept epoch
    assert kept < trainer.epoch == 8  # fidelity did fall: the keeper had work to do
    assert margin(kept) >= 0 and all(margin(e) < 0 for e in ev if e > kept), {e: margin(e) for e in ev}
    # the rule is not the mean's alone: a later epoch within KEEP_FIDELITY_DROP points was still refused
    drops = {e: 100 * (keeper.base - r["eval_fidelity"]) for e, r in ev.items()}
    assert any(drops[e] <= checks.KEEP_FIDELITY_DROP and margin(e) < 0 for e in ev if e > kept), drops
    got, want = load(tmp_path / "kept"), states[kept]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k].float()) for k in got)


def test_a_round_from_a_served_adapter_is_kept_within_reach_of_the_base_not_of_its_start(tmp_path):
    """A later round starts from the served adapter, whose fidelity is not the base's: the keeper measures the
    base itself (adapters off), so promoted rounds cannot add their allowances up."""
    from safetensors.torch import save_file

    from rlcm.lora import lora_state
    from studio import checks

    first = _dark_round(tmp_path / "first", epochs=3, lr=0.01)[0]
    served = tmp_path / "served-adapter.safetensors"  # what the studio writes for the next round: peft form
    save_file({k: v.detach().contiguous() for k, v in lora_state(first.unet).items()}, served)
    trainer, keeper, _, _ = _dark_round(tmp_path / "next", epochs=1, lr=1e-4, init_lora=str(served))
    start = trainer.history[0]["eval_fidelity"]
    assert keeper.base == trainer.evaluate(base=True)["eval_fidelity"] > start + checks.KEEP_FIDELITY_DROP / 100


def test_a_round_from_the_served_version_scores_its_start_and_the_base_on_the_last_rounds_renders(tmp_path):
    """Rounds evaluate the same held-out prompts and seeds, so a round from the served adapter finds its start (the
    epoch the last round handed over) and the base among the studio's renders: its keeper renders only its own
    epochs, and scores what it found exactly as fresh renders score. Other weights never match a kept render."""
    from rlcm.lora import save_lora_state
    from studio.rounds import EvalRenders

    renders = EvalRenders()
    first, kept1, _, _ = _dark_round(tmp_path / "first", epochs=2, lr=1e-4, renders=renders)
    assert kept1.kept["epoch"] == 2 and kept1.reused == 0 and (renders.hits, renders.misses) == (0, 2)
    served = save_lora_state(first.unet, tmp_path / "served-adapter.safetensors")  # the studio's served adapter
    trainer, keeper, _, _ = _dark_round(tmp_path / "next", epochs=1, lr=1e-4, init_lora=str(served),
                                        renders=renders)
    assert keeper.reused == 2 and (renders.hits, renders.misses) == (2, 3)  # start and base found; epoch 1 rendered
    start = trainer.history[0]
    # the same weights rendered afresh score the same: the start's row is epoch 2 of the first round, re-scored
    fresh = _dark_round(tmp_path / "fresh", epochs=1, lr=1e-4, init_lora=str(served))[0]
    assert start["eval_fidelity_images"] == fresh.history[0]["eval_fidelity_images"]
    assert start["eval_reward_mean"] == pytest.approx(fresh.history[0]["eval_reward_mean"], abs=1e-6)
    assert keeper.base_images == fresh.evaluate(base=True)["eval_fidelity_images"]
    with pytest.raises(ValueError, match="evaluation prompts"):  # images that are not the evaluation's
        fresh.evaluate(images=fresh.render_eval()[:-1])
    # a round from weights one step of float32 away from the served ones renders its start: only the base is found
    from safetensors.torch import load_file, save_file

    state = load_file(served)
    name = sorted(state)[0]
    state[name] = torch.nextafter(state[name], torch.full_like(state[name], np.inf))
    save_file(state, tmp_path / "other.safetensors")
    third = _dark_round(tmp_path / "third", epochs=1, lr=1e-4, init_lora=str(tmp_path / "other.safetensors"),
                        renders=renders)[1]
    assert third.reused == 1 and (renders.hits, renders.misses) == (3, 5) and len(renders.sets) == renders.size
    # full, it drops the oldest version's set, not the base's, which every round scores (a live-loop round from a
    # step back, an epoch no keeper rendered, once pushed the base out after a round that evaluated two epochs)
    few = EvalRenders(size=2)
    key = lambda w: EvalRenders.key(trainer, w)  # noqa: E731
    for w in ("base", "v1", "v2"):
        few.put(key(w), [w])
    assert few.get(key("base")) == ["base"] and few.get(key("v1")) is None and few.get(key("v2")) == ["v2"]


def test_a_round_whose_last_epoch_passes_evaluates_twice_and_steps_back_to_half_of_it(tmp_path):
    """At a tiny step size the last epoch keeps fidelity: it is handed over after two evaluations (the start, which
    is the base, and it). A step back gets the saved epoch nearest half the handed-over one, with its own weights."""
    trainer, keeper, states, load = _dark_round(tmp_path, epochs=5, lr=1e-4)
    assert keeper.kept["epoch"] == 5
    assert [r["epoch"] for r in trainer.history if "eval_fidelity" in r] == [0, 5]
    assert keeper.fallback(5) == (3, keeper.earlier_dir / "epoch-3")  # 2 and 3 are as near 2.5: the later
    assert keeper.fallback(4) == (2, keeper.earlier_dir / "epoch-2") and keeper.fallback(1) is None
    for e in (2, 3, 5):
        got = load(keeper.directory if e == 5 else keeper.earlier_dir / f"epoch-{e}")
        assert got.keys() == states[e].keys() and all(torch.equal(got[k], states[e][k].float()) for k in got), e
    assert any(not torch.equal(states[2][k], states[3][k]) for k in states[2])  # each epoch its own weights
    keeper.clean()  # disk: only the handed-over LoRA stays
    assert not keeper.snapshots.exists() and not keeper.earlier_dir.exists() and keeper.directory.is_dir()

    # choosing leaves the trainer's weights as training left them
    from diffusers.utils import convert_state_dict_to_diffusers

    from rlcm.lora import lora_state
    from studio.rounds import FidelityKeeper

    now = convert_state_dict_to_diffusers({k: v.detach() for k, v in lora_state(trainer.unet).items()})
    assert all(torch.equal(now[k], states[5][k]) for k in states[5])
    # a keeper with no saved epochs (a round resumed from before it saved them) judges the last epoch as trained;
    # one stopped (the round cancelled) evaluates nothing
    late = FidelityKeeper(trainer, tmp_path / "late", every=1)
    assert late.select()["epoch"] == 5 and load(tmp_path / "late").keys() == states[5].keys()
    assert all(torch.equal(load(tmp_path / "late")[k], states[5][k].float()) for k in states[5])
    stop = threading.Event()
    stop.set()
    assert FidelityKeeper(trainer, tmp_path / "stopped", every=1).select(stop=stop) is None
