"""The studio runtime: everything the Gradio app does, as plain methods tested without Gradio.

Owns the feedback store, the served generator with its pair queue, the round runner, snapshots and the
admin check. Every method validates its input and raises ValueError / PermissionError with a message a
person can act on; nothing is written when it raises.
"""

from __future__ import annotations

import collections
import hmac
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from feedback import backup, identity
from feedback.checks import check_prompt
from feedback.store import FeedbackStore
from rlcm.prompts import get_prompts

from . import checks, gate, views
from .rounds import RoundRunner, replace_lora
from .serving import BASE, PairQueue, ServedGenerator
from .settings import StudioSettings, write_json


# an automatic round refused because the reward model is no better than chance is tried again after this many
# new labels, not a whole `auto_round_every`: live loop, warm_colours, the first round started at 40 labels of 20
AUTO_RETRY_LABELS = 5
# a round waits at most this long for a full pair queue before its trainer loads (RoundRunner.before_load): the
# queue's pairs carry raters through the load and the epoch-0 evaluation
ROUND_QUEUE_WAIT_S = 20.0
SERVED_ADAPTER = "served-adapter.safetensors"  # under rounds/<id>/: the weights people were shown, peft format
# after the first look the warm-up scores the base on the confirmation set this many images at a time, each when
# the pair queue is full and no round trains (16 take about 1 s on 2 CPU cores; with 64 at a time, round 1 of a
# live-loop run waited 9.4 s for the queue before it loaded, against 0 s in table30)
WARM_UP_CHUNK = 16


def _parent_of(row: dict) -> str:
    """The version a round started from (its config's init_version; the base for rounds from before it was kept)."""
    return (row.get("config") or {}).get("init_version", BASE)


class NoBetterThanChance(ValueError):
    """A round refused because the freshly fitted reward model is no better than chance."""


class Studio:
    def __init__(self, settings: StudioSettings, start_workers: bool = True):
        self.settings = s = settings
        # settings built in code skip from_env's check; validating here also imports rlcm.policy (diffusers) in
        # this thread, before the pair queue loads diffusers in its own: diffusers' lazy imports are not
        # thread-safe, and the first save_settings otherwise failed with "cannot import name 'LCMScheduler'"
        s.validate()
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if not (s.data_dir / "feedback.db").exists() and (s.backup_dir or s.backup_repo):
            backup.restore(s.data_dir, backup_dir=s.backup_dir, repo_id=s.backup_repo, token=os.environ.get("HF_TOKEN"))
            s.load_saved()  # the restored settings.json arrived after from_env read the directory
        self.store = FeedbackStore(s.data_dir)
        self.store.delete_orphan_images()
        self.repo_backup = None
        if s.backup_repo and start_workers:
            self.repo_backup = backup.start_repo_backup(self.store, s.backup_repo, s.data_dir / "repo-backup",
                                                        s.repo_backup_every_min, os.environ.get("HF_TOKEN"))
        self.generator = ServedGenerator(s)
        self.prompts = get_prompts(s.prompt_set, "train", 64 if s.prompt_set == "toy" else None)
        self.compare_prompts = get_prompts(s.prompt_set, "heldout", s.compare_prompts, seed=7)[: s.compare_prompts]
        self.rounds = RoundRunner(
            s, self.store, on_done=self._consider, start_adapter=self._start_adapter,
            before_load=lambda: self.queue.wait_full(ROUND_QUEUE_WAIT_S, self.rounds.cancel_event))
        self.queue = PairQueue(self.store, self.generator, self.prompts, s.queue_size, s.earlier_fraction,
                               reward_model=lambda: self.rounds.reward_model, candidates=s.pair_candidates,
                               ab_fraction=s.ab_fraction, ab_draws=s.ab_draws, keep_unrated=s.keep_unrated,
                               trial_needs_votes=lambda: self._held is None or self._held != self._confirming)
        # pairs shown lately are spared by pruning; never more of them than the unrated samples the admin keeps,
        # else the queue's window (512 ids) outweighs a small keep_unrated and unrated samples pile up to it
        self.queue.shown = collections.deque(maxlen=min(self.queue.shown.maxlen or 512,
                                                        max(4 * s.queue_size, s.keep_unrated)))
        # labels when the last automatic round was due; None: this studio has had no round, and its first
        # automatic one comes after `auto_round_first` labels, not a whole `auto_round_every`
        self._labels_at_last_round: int | None = self.store.counts()["labelled"] if self.store.rounds() else None
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []  # warm-up and automatic rounds' fits, joined by `close`
        self._gate_lock = threading.Lock()
        self._confirming: str | None = None  # the candidate on trial whose fidelity confirmation still runs
        self._held: str | None = None  # the candidate whose votes would promote it, held for that confirmation
        self.auto_note = ""  # why the last automatic round did not start, shown in the Train tab
        self._compare_scores: dict[tuple, dict] = {}  # (version, reward model, image mtimes) -> reward, fidelity
        self._base_fidelity: dict[tuple, np.ndarray] = {}  # (round, steps, guidance, images) -> base's fidelity
        self._base_lock = threading.Lock()  # the warm-up and a round's checks compute the base's scores once
        self._restore_active()
        self._restore_candidate()
        self._restore_reward_model()
        if start_workers:
            self.queue.start()
            self._resume_interrupted()
            self._spawn(self._warm_up, "warm-up")
            if s.snapshot_every_s and s.backup_dir:
                threading.Thread(target=self._snapshot_loop, daemon=True, name="snapshots").start()

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._workers = [w for w in self._workers if w.is_alive()] + [t]
        t.start()

    def close(self, wait_s: float = 60.0) -> None:
        """Stop the pair queue and any round (waiting up to `wait_s` for the round to reach its next epoch).

        Background fits are joined first: a process that exits while a thread is inside torch aborts
        ("terminate called without an active exception"), and a fit that ends after the cancel would start a
        round nobody stops."""
        self._stop.set()
        deadline = time.monotonic() + wait_s
        for t in list(self._workers):
            t.join(max(0.0, deadline - time.monotonic()))
        self.rounds.cancel()
        self.queue.stop()
        self.rounds.join(wait_s)
        if self.repo_backup is not None:
            try:
                self.repo_backup.trigger().result()
            finally:
                self.repo_backup.stop()

    # ------------------------------------------------------------ admin

    def check_admin(self, password: str | None = None, username: str | None = None) -> str:
        """Who is acting as admin; PermissionError otherwise (password locally, HF username on a Space)."""
        if username and username in self.settings.admin_users:
            return username
        if password and hmac.compare_digest(password.encode(), self.settings.admin_password.encode()):
            return "admin"
        raise PermissionError("admin only: enter the admin password (RLCM_ADMIN_PASSWORD)"
                              + (" or sign in with an allowed Hugging Face account" if self.settings.on_space else ""))

    # ------------------------------------------------------------ rating

    def rater(self, name: str | None, token: str | None = None, username: str | None = None) -> identity.Rater:
        """Who is voting: a signed-in Hugging Face user, or a typed name with the token its browser keeps.

        On a Space with named rating, visitors who are not signed in are asked to sign in; in open mode a
        visitor without a name gets a random one (the browser keeps it with its token).
        """
        if username:
            return identity.signed_in(username)
        if name is not None and not isinstance(name, str):  # the JSON API takes anything
            raise ValueError(f"a rater name must be text, got {type(name).__name__}")
        if self.settings.on_space and self.settings.rating == "named":
            raise PermissionError("sign in with Hugging Face to rate")
        if not (name or "").strip():
            if self.settings.rating == "open":
                return identity.typed(identity.anonymous_name(), token)
            raise ValueError("enter your name before rating")
        return identity.typed(name, token)

    def next_pair(self) -> dict:
        """The next pair to rate (from the pre-generated queue), with its image paths."""
        return self._with_images(self.queue.get())

    def _with_images(self, pair: dict) -> dict:
        return {**pair, "image_a": str(self.store.image_path(pair["a"])),
                "image_b": str(self.store.image_path(pair["b"]))}

    def undone_pair(self, row: dict) -> dict:
        """The pair of an undone vote, to show again (same sides)."""
        return self._with_images({"prompt": row["prompt"], "a": row["sample_a"], "b": row["sample_b"],
                                  "version": self.generator.version})

    def counts_line(self, rater: identity.Rater | None) -> str:
        mine, total = self.rater_counts(rater.name) if rater else (0, self.store.counts()["comparisons"])
        return views.rate_counts(mine, total, self.generator.version, self.generator.candidate)

    def vote(self, rater: identity.Rater, sample_a: str, sample_b: str, choice: str, client_id: str) -> dict:
        """Record one judgement exactly once (a retried client_id or a repeated pair is not counted again);
        the row carries `rater_token`, which the caller must keep for the name's later votes and undos."""
        row = self.store.vote(rater, sample_a, sample_b, choice, client_id)
        if row["created"] and self.generator.candidate in (row.get("generator_a"), row.get("generator_b")):
            self.check_gate()
        self._maybe_auto_round()
        return row

    def undo(self, rater: identity.Rater) -> dict | None:
        """Retract the caller's own latest vote (never anyone else's)."""
        return self.store.undo_vote(rater)

    def rater_counts(self, rater: str) -> tuple[int, int]:
        stats = {r["rater"]: r["comparisons"] for r in self.store.rater_stats()}
        return stats.get(rater, 0), self.store.counts()["comparisons"]

    def _maybe_auto_round(self) -> None:
        """Every `auto_round_every` new labels (the first time `auto_round_first`), when no round runs, start a
        round in the background (from the candidate on trial, if any, at most once per candidate: see
        `_start_adapter`), unless the freshly fitted reward model is no better than chance (then the next try
        comes AUTO_RETRY_LABELS labels later)."""
        n = self.settings.auto_round_every
        with self._gate_lock:
            labelled = self.store.counts()["labelled"]
            last = self._labels_at_last_round
            due = n if last is not None else self.settings.auto_round_first
            if not n or labelled - (last or 0) < due or self.rounds.running:
                return
            cand = self.generator.candidate
            if cand and any(_parent_of(r) == cand for r in self.store.rounds()):
                return
            self._labels_at_last_round = labelled

        def run():
            try:
                self.start_round(by="auto")
                self.auto_note = ""
            except NoBetterThanChance as e:  # try again soon: a few more labels may be all the model needs
                self.auto_note = f"automatic round not started: {e}"
                with self._gate_lock:
                    self._labels_at_last_round = labelled - n + AUTO_RETRY_LABELS
            except (RuntimeError, ValueError) as e:
                self.auto_note = f"automatic round not started: {e}"

        self._spawn(run, "auto-round")

    def generate(self, prompt: str, seed: int) -> dict:
        """One image from the served model for `prompt` and `seed`, stored as a sample; checked before any work."""
        prompt = check_prompt(prompt)  # the store's own rule for prompts
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError("seed must be an integer from 0 to 2**63 - 1")
        images, v = self.generator.generate([prompt], [seed])
        sid = self.store.add_sample(images[0], prompt, seed, self.settings.steps, self.settings.guidance, generator=v)
        return {"id": sid, "version": v}

    # ------------------------------------------------------------ rounds

    def start_round(self, by: str, force: bool = False) -> int:
        """Refit the reward model, then train a round in the background from the served version, or from the
        candidate while one is on trial (kept only if people promote that candidate: see `_start_adapter`).

        Refused (ValueError) when the reward model is no better than chance on its held-out pairs, unless
        `force` (an admin who has read the warning)."""
        if self._stop.is_set():
            raise RuntimeError("the studio is closing")
        labelled = self.store.counts()["labelled"]
        if labelled < 8:
            raise ValueError(f"need at least 8 labelled pairs to fit a reward model, have {labelled}")
        if self.rounds.running:
            raise ValueError("a fine-tune round is already running")
        fit_start = time.monotonic()
        try:
            rm, metrics, _, _ = self.rounds.fit_reward_model()
        except (OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"cannot fit the reward model: {e}") from None
        if not metrics.get("better_than_chance", True) and not force:
            raise NoBetterThanChance(f"the reward model is no better than chance ({views.accuracy_text(metrics)}): a "
                             "round would learn noise. Rate more pairs, or start anyway")
        self._labels_at_last_round = labelled
        if self._stop.is_set():  # closed while the model was fitting
            raise RuntimeError("the studio is closing")
        return self.rounds.start(by, reward_model=rm, fit_seconds=time.monotonic() - fit_start)

    def cancel_round(self) -> bool:
        return self.rounds.cancel()

    def _round_version(self, version: str) -> tuple[int, dict]:
        try:
            rid = int(version.removeprefix("round-"))
            row = self.store.get_round(rid)
        except (ValueError, KeyError):
            raise ValueError(f"unknown version {version!r}; valid: {', '.join(self.versions())}") from None
        if row["status"] != "done" or not row.get("lora_path") or not Path(row["lora_path"]).exists():
            raise ValueError(f"round {rid} has no finished LoRA (status {row['status']})")
        return rid, row

    def activate(self, version: str, by: str = "admin") -> str:
        """Serve the base model ("base") or a finished round ("round-N"): a rollback, or an admin's forced
        promotion of a candidate. A rejected round can't be served."""
        if version == BASE:
            self.generator.activate(BASE, None)
        else:
            rid, row = self._round_version(version)
            if row.get("verdict") == "rejected":
                raise ValueError(f"{version} was rejected ({row.get('verdict_reason')}); it can't be served")
            if row.get("verdict") != "promoted":
                self.store.update_round(rid, verdict="promoted", verdict_reason=f"promoted by {by}")
            self.generator.activate(version, row["lora_path"])
        write_json(self.settings.data_dir / "active.json", {"version": version})
        self.queue.flush()
        return version

    def reject(self, version: str, reason: str) -> None:
        """End `version`'s trial: it is never served (the served version stays). A round training ahead from
        it is cancelled, and the next automatic round may start at once, from the served version."""
        rid, _ = self._round_version(version)
        self.store.update_round(rid, verdict="rejected", verdict_reason=reason)
        if self.generator.candidate == version:
            self.generator.set_candidate(None)
        running = self.rounds.snapshot().get("round") if self.rounds.running else None
        if running and _parent_of(self.store.get_round(running)) == version:
            self.rounds.cancel()
            self._labels_at_last_round = -self.settings.auto_round_every
        self.queue.flush()

    def check_gate(self) -> tuple[str, str]:
        """Apply the gate rule to the pending candidate's A/B votes; promote or reject it when they say so."""
        with self._gate_lock:
            cand = self.generator.candidate
            if cand is None:
                return "none", "no candidate on trial"
            served = self.generator.version
            rec = gate.record(self.store.comparisons(between=(cand, served), same_seed=True), cand, served)
            decision, why = self._decide(cand, rec)
            if decision == "promote":
                rid, _ = self._round_version(cand)
                self.store.update_round(rid, verdict="promoted", verdict_reason=f"people's votes: {why}")
                self.activate(cand, by="votes")
            elif decision == "reject":
                self.reject(cand, f"people's votes: {why}")
            return decision, why

    def _decide(self, cand: str, rec: gate.Record) -> tuple[str, str]:
        """The gate rule's decision on `cand`'s A/B record, held at "wait" while its prompt fidelity is still
        being confirmed on new prompts (`_confirm_on_trial`): votes may reject it then, not promote it."""
        decision, why = gate.decide(rec, self.settings.gate_rule())
        if decision == "promote" and cand == self._confirming:
            self._held = cand  # no more A/B pairs for it: their votes could not change this (the queue asks)
            return "wait", f"{why}; promoted once its prompt fidelity on new prompts is confirmed"
        return decision, why

    def submit_candidate(self, lora_dir: str | Path, by: str = "admin") -> tuple[str, str, str | None]:
        """Put a LoRA trained elsewhere (diffusers format, e.g. `python -m rlcm train`'s lora/) on trial like a
        round's: (version, verdict, reason). It starts as a finished round whose parent is the served version."""
        lora_dir = Path(lora_dir)
        if not any(lora_dir.glob("*.safetensors")):
            raise ValueError(f"no LoRA weights (*.safetensors) in {lora_dir.name}")
        if self.generator.candidate:
            raise ValueError(f"{self.generator.candidate} is still on trial; promote or reject it first")
        served, init = self._start_adapter()  # the served version: no candidate is on trial here
        rid, dst = self._add_finished_round({"by": by, "submitted": True, "init_version": served,
                                             "init_lora": str(init) if init else None}, lora_dir, {})
        verdict, reason = self._consider(rid, dst, checks.reject_reason([], dst, {}))
        return f"round-{rid}", verdict, reason

    def _consider(self, rid: int, lora_dir: Path, reason: str | None,
                  fallback: tuple[int, Path] | None = None) -> tuple[str, str | None]:
        """A trained round's verdict: rejected at once when its numbers or its images fail the automatic
        checks, else a candidate on trial in A/B pairs. The served version never changes here. When the
        handed-over epoch fails the image checks (mostly: it lost prompt fidelity on new prompts), the round
        steps back once to `fallback`, an earlier epoch its keeper saved (its LoRA then replaces `lora_dir`;
        after a failing look on trial it goes on as a new round instead, `_step_back_on_trial`).
        When the confirmation's first look leaves it unsettled, the trial opens and the rest of the looks follow
        while people vote (`_confirm_on_trial`): the verdict returned is the one after them."""
        version, rest = f"round-{rid}", None
        parent = _parent_of(self.store.get_round(rid))
        if reason is None and parent not in (BASE, self.generator.version):
            reason = self._await_parent(rid, parent)
        if reason is None:
            try:  # loaded for the checks only: no A/B pair shows it, and no vote promotes it, before they pass
                self._render_compare(BASE, lambda p, sd: self.generator.generate(p, sd, version=BASE)[0], only_new=True)
                if parent != BASE and parent == self.generator.version:
                    self._render_compare(parent, lambda p, sd: self.generator.generate(p, sd, version=parent)[0],
                                         only_new=True)
                (reason, rest), lost = self._check_images(rid, version, lora_dir, parent), None
                if reason is not None and fallback is not None:
                    epoch, earlier = fallback
                    lost = {"epoch": (self.store.get_round(rid).get("metrics") or {}).get("epoch_served"),
                            "reason": reason}
                    reason, rest = self._check_images(rid, version, earlier, parent)
                    if reason is None:
                        replace_lora(lora_dir, earlier)
                        self._update_metrics(rid, epoch_served=epoch, stepped_back_from=lost)
                    else:
                        reason = f"{lost['reason']}; at epoch {epoch}: {reason}"
            except Exception as e:  # unloadable or broken weights
                reason = f"{type(e).__name__}: {e}"
            if reason is not None:
                self.generator.set_candidate(None)
        verdict = "rejected" if reason else "candidate"
        if verdict == "candidate" and rest is not None:  # before its trial opens: a restart then rejects it
            self._confirming = version
            self._update_metrics(rid, confirming=True)
        self.store.update_round(rid, verdict=verdict, verdict_reason=f"automatic check: {reason}" if reason else None)
        if verdict == "candidate":  # after the store says so: a vote may promote it from the next moment on
            self.generator.open_trial(version)
        self.queue.flush()
        if verdict == "candidate" and rest is not None:
            return self._confirm_on_trial(rid, version, rest, fallback if lost is None else None)
        return verdict, reason

    def _confirm_on_trial(self, rid: int, version: str, looks,
                          fallback: tuple[int, Path] | None = None) -> tuple[str, str | None]:
        """The confirmation's remaining looks (`checks.iter_confirmation`) while `version` is already on trial:
        people vote meanwhile instead of waiting a minute or more for up to 512 more images per version (live loop,
        table22: the checks took 70-114 s of a round's 3-4 minutes). The gate may reject it meanwhile but promotes
        it only once the looks pass; a failing look rejects it, and its earlier saved epoch (`fallback`) goes on as
        a new version (`_step_back_on_trial`). Its (verdict, reason) when the looks end."""
        if self.rounds.running:  # a round's checks (a submitted LoRA's run in the caller's thread)
            self.rounds.set_state("checking while on trial")
        change, reason, broke = None, None, False
        try:
            for change in looks:
                self._update_metrics(rid, fidelity_confirmed=change)
            reason = checks.confirm_reason(change)
        except Exception as e:  # its trial ended meanwhile (the version no longer renders), or the check broke
            reason, broke = f"{type(e).__name__}: {e}", True
        finally:
            self._confirming = None
            self._update_metrics(rid, confirming=None)
        if reason is None:
            self.check_gate()  # the votes may have been waiting for this
        else:
            reason = f"{reason} (while on trial)"
            with self._gate_lock:
                failed_here = self.generator.candidate == version  # else votes or an admin ended it: theirs stands
                if failed_here:
                    self.reject(version, f"automatic check: {reason}")
            if failed_here:
                if fallback is not None and not broke:
                    return "rejected", f"{reason}; {self._step_back_on_trial(rid, reason, fallback)}"
                return "rejected", reason
        row = self.store.get_round(rid)
        return row.get("verdict"), row.get("verdict_reason")

    def _step_back_on_trial(self, rid: int, reason: str, fallback: tuple[int, Path]) -> str:
        """Round `rid` failed a confirmation look while on trial; its earlier saved epoch (`fallback`) is checked
        and goes on trial as a new round of its own, so that no vote cast on the failed weights counts for it
        (table23: 2 of 4 rounds that failed on trial had 15 and 28 A/B votes). It starts from the same version
        with the same reward model; its own confirmation draws new prompts. What became of it, in words."""
        epoch, earlier = fallback
        row = self.store.get_round(rid)
        m = row.get("metrics") or {}
        lost = {"round": rid, "epoch": m.get("epoch_served"), "reason": reason}
        kept = {k: m[k] for k in ("reward_model", "guard_weight", "epochs", "fidelity_base") if k in m}
        new, dst = self._add_finished_round(
            {**(row.get("config") or {}), "by": f"step back from round-{rid}", "step_back_of": rid}, earlier,
            {**kept, "epoch_served": epoch, "stepped_back_from": lost},
            reward_model_version=row.get("reward_model_version"))
        said = f"its kept epoch {epoch} is checked again as round-{new}"
        self._update_metrics(rid, stepped_back_to=f"round-{new}")
        self.store.update_round(rid, verdict_reason=f"{row['verdict_reason']}; {said}")
        verdict, why = self._consider(new, dst, None)
        return f"{said}: {verdict}" + (f" ({why})" if why else "")

    def _add_finished_round(self, config: dict, lora: Path, metrics: dict, **fields) -> tuple[int, Path]:
        """A round that trained elsewhere (a submitted LoRA, a step back's earlier epoch): stored as finished,
        with a copy of `lora` as its LoRA, before its checks. Its id and LoRA directory."""
        rid = self.store.create_round({**config, "trained_elsewhere": True})  # a restart never trains it
        dst = self.settings.data_dir / "rounds" / str(rid) / "lora"
        replace_lora(dst, lora)
        self.store.update_round(rid, status="done", lora_path=str(dst), metrics=metrics, **fields)
        return rid, dst

    def _update_metrics(self, rid: int, **values) -> None:
        """Set some of round `rid`'s metrics; a value None removes that one (others the round holds stay)."""
        metrics = dict(self.store.get_round(rid).get("metrics") or {})
        for k, v in values.items():
            if v is None:
                metrics.pop(k, None)
            else:
                metrics[k] = v
        self.store.update_round(rid, metrics=metrics)

    def _await_parent(self, rid: int, parent: str) -> str | None:
        """A round trained ahead from `parent` while it was on trial waits (in its own thread) for people's
        verdict on it; why the round can't go on (its parent is not served then), or None."""
        self.rounds.set_state(f"waiting for people's votes on {parent}", waiting_on=parent)
        if self.settings.confirms_fidelity:
            try:  # the base's half of this round's checks, while it waits anyway
                self._base_confirmation(rid)
            except Exception:  # the checks compute them again, and report what fails
                pass
        while self.generator.candidate == parent and not self.rounds.cancel_event.wait(0.5):
            pass
        self.rounds.set_state("checking")
        if parent != self.generator.version:
            row = self._round_row(parent)
            return (f"it was trained from {parent} while that was on trial, and {parent} is not served "
                    f"({row.get('verdict') or 'no verdict'})")
        return None

    def _round_row(self, version: str) -> dict:
        try:
            return self.store.get_round(int(version.removeprefix("round-")))
        except (ValueError, KeyError):
            return {}

    def _check_images(self, rid: int, version: str, lora_dir: Path, parent: str) -> tuple[str | None, object]:
        """Load `lora_dir` as `version` for the checks (not on trial), render its Compare images and check them,
        then confirm its prompt fidelity on new prompts: (why it fails or None, the confirmation's remaining
        looks or None; see `_confirm_fidelity`)."""
        self.generator.set_candidate(version, lora_dir, trial=False)
        self._render_compare(version, lambda p, sd: self.generator.generate(p, sd, version=version)[0])
        reason = checks.images_reason(self.settings.data_dir / "compare", version, parent)
        if reason is None and self.settings.confirms_fidelity:
            return self._confirm_fidelity(rid, version)
        return reason, None

    def _confirm_fidelity(self, rid: int, version: str) -> tuple[str | None, object]:
        """Toy prompt fidelity of `version` against the base on the confirmation set, recorded in the round's
        metrics. Both are scored on the round's own draw of prompts and seeds, a look at a time
        (`checks.iter_confirmation`): more only while the last look leaves it unsettled. Returns (why the first
        look fails it, None) or (None, None) when that look settles it or is the only one; otherwise (None, the
        remaining looks), which the studio takes while the version is on trial (`_confirm_on_trial`)."""
        prompts, seeds, _ = self._base_confirmation(rid, 0)  # the round's draw (the base is scored per look)
        mine = np.zeros(0)

        def candidate_upto(n: int) -> np.ndarray:
            nonlocal mine
            mine = np.concatenate([mine, checks.fidelity_scores(
                lambda p, sd: self.generator.generate(p, sd, version=version)[0], prompts[len(mine):n],
                seeds[len(mine):n])])
            return mine

        looks = checks.iter_confirmation(self.settings.confirm_prompts, prompts,
                                         lambda n: self._base_confirmation(rid, n)[2], candidate_upto)
        first = next(looks)
        self._update_metrics(rid, fidelity_confirmed=first)
        if checks.confirm_settled(first) or len(checks.confirmation_looks(self.settings.confirm_prompts)) == 1:
            return checks.confirm_reason(first), None
        return None, looks

    def _base_confirmation(self, rid: int, n: int | None = None) -> tuple[list[str], list[int], np.ndarray]:
        """Round `rid`'s confirmation set (its own prompts and seeds) and the base's per-image fidelity on its
        first `n` images (default all), each computed once per (round, steps, guidance, size): by the warm-up
        for the next round, by a round while it waits for its parent's verdict, or by its checks. Only the
        latest few are kept."""
        prompts, seeds = checks.confirmation_set(self.settings.confirm_prompts, draw=rid)
        n = len(prompts) if n is None else n
        key = (rid, self.settings.steps, self.settings.guidance, len(prompts))
        with self._base_lock:
            done = self._base_fidelity.get(key, np.zeros(0))
            if len(done) < n:
                done = np.concatenate([done, checks.fidelity_scores(
                    lambda p, sd: self.generator.generate(p, sd, version=BASE)[0], prompts[len(done):n],
                    seeds[len(done):n])])
            self._base_fidelity.pop(key, None)
            self._base_fidelity[key] = done  # inserted last: the newest stays
            while len(self._base_fidelity) > 4:
                self._base_fidelity.pop(next(iter(self._base_fidelity)))
            return prompts, seeds, done[:n]

    def _warm_up(self) -> None:
        """Once the pair queue is full, score the base on the next round's confirmation set (in memory, nothing
        written) while people rate, so the first candidate reaches its vote and its promotion sooner (live loop:
        the checks of round 1 took ~38 s of ratings, of later rounds ~24 s; the looks on trial 54-60 s, RESULTS
        table30): the first look's images, then the rest a chunk at a time while the queue is full and no round
        trains. Before the first round the CPU has little else to do; a round's training has, and a look renders
        what is left."""
        if not self.settings.confirms_fidelity:
            return
        self.queue.wait_full(60, self._stop)
        try:
            rid = self.store.next_round_id()
            looks = checks.confirmation_looks(self.settings.confirm_prompts)
            first, total = looks[0], looks[-1]  # the last look is the whole set
            for n in range(first, total + WARM_UP_CHUNK, WARM_UP_CHUNK):
                if n > first:  # raters' pairs first: a round waits for a full queue before it loads
                    self.queue.wait_full(ROUND_QUEUE_WAIT_S, self._stop)
                    if self.rounds.running or self._stop.is_set():
                        return
                self._base_confirmation(rid, min(n, total))
        except Exception as e:  # the first round's checks compute them anyway
            self.queue.errors.append(f"warm-up: {type(e).__name__}: {e}")

    def _start_adapter(self) -> tuple[str, Path | None]:
        """What a new round starts from, and its weights in peft format (the file `RLCMConfig.init_lora` reads):
        the served version, or the candidate while one is on trial. A round ahead from a candidate waits for
        people's verdict on it and is dropped unless it is promoted (`_await_parent`), so every round that
        reaches a vote builds on what people were shown and chose. The weights are written from the adapter
        people see, not the round's trainer checkpoint (its last epoch when the keeper handed over an earlier one)."""
        with self.generator.lock:  # no promotion or trial's end between reading the version and writing its weights
            cand = self.generator.candidate
            version, role = (cand, "candidate") if cand else (self.generator.version, "served")
            if version == BASE:
                return BASE, None
            path = self.settings.data_dir / "rounds" / version.removeprefix("round-") / SERVED_ADAPTER
            if not path.exists():  # a version's weights never change: written when a round first starts from it
                tmp = path.with_name(path.name + ".tmp")
                self.generator.save_adapter(role, tmp)
                os.replace(tmp, path)
            return version, path

    def _restore_active(self) -> None:
        path = self.settings.data_dir / "active.json"
        if path.exists():
            version = json.loads(path.read_text()).get("version", BASE)
            if version != BASE:
                try:
                    self.activate(version)
                except ValueError:
                    path.unlink()

    def _restore_candidate(self) -> None:
        for r in self.store.rounds():
            if r["status"] in ("pending", "running") and (r.get("config") or {}).get("trained_elsewhere"):
                # stopped while `_add_finished_round` stored it: there is nothing to train, and its copy may be partial
                shutil.rmtree(self.settings.data_dir / "rounds" / str(r["id"]), ignore_errors=True)
                self.store.update_round(r["id"], status="failed", error="the studio stopped while storing this "
                                        "version (trained elsewhere: nothing to resume); submit it again")
            elif r["status"] == "done" and r.get("verdict") == "candidate" and (r.get("metrics") or {}).get("confirming"):
                self.store.update_round(r["id"], verdict="rejected", verdict_reason="the studio stopped before its "
                                        "prompt fidelity confirmation finished")
            elif r["status"] == "done" and r.get("verdict") == "candidate" and Path(r["lora_path"] or "").exists():
                self.generator.set_candidate(f"round-{r['id']}", r["lora_path"])
            elif r["status"] == "done" and not r.get("verdict"):  # stopped in its checks or waiting on its parent
                self.store.update_round(r["id"], verdict="rejected",
                                        verdict_reason="the studio stopped before its checks finished")

    def _restore_reward_model(self) -> None:
        path = self.settings.data_dir / "reward_model.json"
        if path.exists():
            import reward_model

            d = self.settings.data_dir / "reward_models" / json.loads(path.read_text()).get("version", "")
            try:
                self.rounds.reward_model = reward_model.load(d)
            except Exception as e:  # a broken file must not stop the studio; the next fit replaces it
                self.queue.errors.append(f"reward model not restored: {e}")

    def _resume_interrupted(self) -> None:
        for r in self.store.rounds():
            if r["status"] in ("running", "pending"):
                try:
                    self.rounds.start(by="resume", resume_id=r["id"])
                except RuntimeError:
                    pass
                return

    def versions(self) -> list[str]:
        """Versions that can be served: the base, promoted rounds and the candidate on trial."""
        return [BASE] + [f"round-{r['id']}" for r in self.store.rounds()
                         if r["status"] == "done" and r.get("verdict") in ("promoted", "candidate")]

    def trial(self) -> str:
        """The pending candidate's A/B record and what the gate rule says now."""
        cand, served = self.generator.candidate, self.generator.version
        if cand is None:
            return views.trial_text(None, served, None, "", "")
        rec = gate.record(self.store.comparisons(between=(cand, served), same_seed=True), cand, served)
        return views.trial_text(cand, served, rec, *self._decide(cand, rec))

    def train_view(self) -> tuple[str, list[dict], list[dict]]:
        """Train tab: progress line (with the trial and auto-round notes), the rounds table, the raw curve rows."""
        p = self.rounds.snapshot()
        text = views.round_progress(p) + "\n\n" + self.trial()
        if self.auto_note:
            text += f"\n\n{self.auto_note}"
        return text, views.history_rows(self.store.rounds()), p.get("rows", [])

    def leaderboard(self) -> list[dict]:
        """Every version people have compared (Bradley–Terry on cross-version votes, base = 0) with the
        reward model's mean score on the fixed Compare prompts, and a reward-hacking flag."""
        votes = [v for v in self.store.comparisons() if v["generator_a"] != v["generator_b"]]
        names = [BASE] + [f"round-{r['id']}" for r in self.store.rounds() if r["status"] == "done"]
        verdicts = {f"round-{r['id']}": r.get("verdict") for r in self.store.rounds()}
        bt = gate.bradley_terry(votes, names, anchor=BASE)
        scores = {r["version"]: r.get("reward") for r in self.compare()}
        rule = self.settings.gate_rule()
        rows = []
        for v in names:
            b = bt[v]
            row = {"version": v, "status": "served" if v == self.generator.version else
                   "candidate" if v == self.generator.candidate else verdicts.get(v) or "", "votes": b["votes"],
                   "win_vs_base": gate.win_prob(b["strength"]), "win_low": gate.win_prob(b["low"]),
                   "win_high": gate.win_prob(b["high"]), "reward": scores.get(v)}
            base_reward = scores.get(BASE)
            # the reward model says better, people (with enough votes) don't: the round optimised the model's flaws
            row["reward_hacking"] = bool(v != BASE and row["reward"] is not None and base_reward is not None
                                         and row["reward"] > base_reward and b["votes"] >= rule.min_votes
                                         and row["win_low"] <= 0.5 and row["win_vs_base"] < 0.6)
            rows.append(row)
        return rows

    # ------------------------------------------------------------ compare

    def _render_compare(self, version: str, sample_fn, only_new: bool = False) -> None:
        if only_new and (self.settings.data_dir / "compare" / version).exists():
            return
        prompts = self.compare_prompts
        images = sample_fn(prompts, [1000 + i for i in range(len(prompts))])
        out = self.settings.data_dir / "compare" / version
        tmp = out.with_name(version + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(tmp / f"{i:02d}.png")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)

    def compare(self) -> list[dict]:
        """Per version with rendered images: the fixed prompts' images, reward-model scores, toy fidelity."""
        from PIL import Image

        rows = []
        rm = self.rounds.reward_model
        for version in self.versions():
            d = self.settings.data_dir / "compare" / version
            if not d.exists():
                continue
            paths = sorted(d.glob("*.png"))
            row = {"version": version, "images": [str(p) for p in paths], "prompts": self.compare_prompts}
            # scored once per (images, reward model): the Compare tab and the leaderboard refresh on a timer
            key = (version, rm.version if rm is not None else None, tuple(p.stat().st_mtime_ns for p in paths))
            if key not in self._compare_scores:
                images = [Image.open(p).convert("RGB") for p in paths]
                scores = {}
                if rm is not None:
                    scores["reward"] = float(rm.score(images, self.compare_prompts[: len(images)]).mean())
                if self.settings.prompt_set == "toy":
                    from rlcm.toy.checker import fidelity

                    scores["fidelity"] = fidelity(images, self.compare_prompts[: len(images)])["score"]
                if len(self._compare_scores) > 256:
                    self._compare_scores.clear()
                self._compare_scores[key] = scores
            rows.append({**row, **self._compare_scores[key]})
        return rows

    # ------------------------------------------------------------ reward model

    def fit_reward_model(self) -> dict:
        _, metrics, directory, zip_path = self.rounds.fit_reward_model()
        return {**metrics, "directory": str(directory), "zip": str(zip_path)}

    def reward_model_info(self) -> dict:
        rm = self.rounds.reward_model
        if rm is None:
            return {"fitted": False}
        d = self.settings.data_dir / "reward_models" / rm.version
        return {"fitted": True, "version": rm.version, **(rm.metrics or {}),
                "zip": str(d.with_suffix(".zip")) if d.with_suffix(".zip").exists() else None}

    def liked_most_and_least(self, n: int = 4, recent: int = 64) -> tuple[list, list]:
        rm = self.rounds.reward_model
        samples = self.store.samples()[-recent:]
        if rm is None or not samples:
            return [], []
        images = [self.store.load_image(s["id"]) for s in samples]
        scores = rm.score(images, [s["prompt"] for s in samples]).tolist()
        order = sorted(range(len(samples)), key=lambda i: scores[i])
        cap = lambda i: (str(self.store.image_path(samples[i]["id"])), f"{scores[i]:.2f} · {samples[i]['prompt']}")
        return [cap(i) for i in order[::-1][:n]], [cap(i) for i in order[:n]]

    def import_reward_model(self, path: str) -> dict:
        import reward_model

        try:
            rm = reward_model.load(path)
        except Exception as e:
            raise ValueError(f"not a loadable reward model: {e}") from None
        self.rounds.reward_model = rm
        return {"version": rm.version, **(rm.metrics or {})}

    # ------------------------------------------------------------ data

    def export_data(self) -> str:
        return str(self.store.export_versioned(self.settings.data_dir / "exports"))

    def import_data(self, path: str) -> dict:
        return self.store.import_parquet(path)

    # ------------------------------------------------------------ artefacts for elsewhere

    def lineage(self, version: str) -> list[int]:
        """The rounds behind `version`, oldest first (each round started from the version served before it)."""
        rounds = []
        while version != BASE:
            rid, row = self._round_version(version)
            rounds.insert(0, rid)
            version = _parent_of(row)
        return rounds

    def export_lora(self, version: str | None = None) -> Path:
        """A folder `pipe.load_lora_weights(dir)` loads with diffusers alone, with a model card (base model,
        reward, rounds, people's win rate over the base), and its zip; returns the zip."""
        from rlcm.lora_export import LoraCard, export_lora

        version = version or self.generator.version
        if version == BASE:
            raise ValueError("the base model has no LoRA: serve a round first, or pick one")
        rid, row = self._round_version(version)
        rec = gate.record(self.store.comparisons(between=(version, BASE)), version, BASE)
        rm = self.rounds.reward_model
        s = self.settings
        metrics = row.get("metrics") or {}
        guard, swap = metrics.get("guard_weight"), metrics.get("swap_weight")  # the absolute weights it trained with
        reward = (f"preference reward model {row.get('reward_model_version') or (rm.version if rm else '?')}"
                  + (f" + {guard:.3g} x CLIP prompt alignment (x100)" if guard else "")
                  + (f" + {swap:.3g} x CLIP swap hinge (x100; rlcm.rewards.swap_hinge)" if swap else ""))
        from rlcm.paths import toy_model_name

        base = toy_model_name(s.model) or s.model
        card = LoraCard(base_model=f"{base} + {s.lcm_lora}" if s.lcm_lora else base, reward=reward,
                        rounds=self.lineage(version), win_rate=rec.win_rate, win_votes=rec.n or None,
                        win_ci=rec.interval(0.95) if rec.n else None, steps=s.steps, guidance=s.guidance)
        out = export_lora(Path(row["lora_path"]).parent, s.data_dir / "exports" / f"lora-{version}", card)
        return Path(shutil.make_archive(str(out), "zip", out))

    def push(self, what: str, repo_id: str, api=None) -> str:
        """Push the reward model, the served LoRA or the preference data to its Hub repo (needs HF_TOKEN)."""
        from . import hub

        if what == "reward_model":
            rm = self.rounds.reward_model
            if rm is None:
                raise ValueError("no reward model yet: fit one first")
            return hub.push_reward_model(self.settings.data_dir / "reward_models" / rm.version, repo_id, api=api)
        if what == "lora":
            return hub.push_lora(Path(self.export_lora()).with_suffix(""), repo_id, api=api)
        if what == "dataset":
            return hub.push_dataset(self.export_data(), repo_id, api=api)
        raise ValueError(f"unknown artefact {what!r}; valid: reward_model, lora, dataset")

    # ------------------------------------------------------------ settings

    def update_settings(self, steps: int, guidance: float, round_epochs: int, auto_round_every: int,
                        alignment_guard: float | None = None, kl_coef: float | None = None,
                        ab_fraction: float | None = None, swap_guard: float | None = None) -> dict:
        """Change the editable settings all at once or not at all (each finite and in range); they persist."""
        values = dict(steps=steps, guidance=guidance, round_epochs=round_epochs, auto_round_every=auto_round_every,
                      alignment_guard=alignment_guard, kl_coef=kl_coef, ab_fraction=ab_fraction,
                      swap_guard=swap_guard)
        self.settings.update(**{k: v for k, v in values.items() if v is not None})
        self.settings.save()
        self.queue.ab_fraction = self.settings.ab_fraction
        self.queue.flush()
        return self.settings.editable()

    # ------------------------------------------------------------ durability

    def snapshot(self) -> str | None:
        """A snapshot into the bucket folder (the database, its images, rounds, reward models, settings), pruned
        to the last `snapshot_keep`; repository backups run on their own (CommitScheduler)."""
        s = self.settings
        if not s.backup_dir:
            return None
        return str(self.store.snapshot(s.backup_dir, keep=s.snapshot_keep))

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.settings.snapshot_every_s):
            try:
                self.snapshot()
            except Exception as e:  # a failed snapshot must not stop the studio
                print(f"snapshot failed: {e}")

    # ------------------------------------------------------------ status

    def public_status(self) -> dict:
        """`status` for anyone: no traces, no server paths, queue errors only counted."""
        st = self.status()
        st["round"] = {k: views.redact(v) if isinstance(v, str) else v for k, v in st["round"].items()
                       if k not in ("trace", "rows")}
        st["errors"] = len(st["errors"])
        return st

    def status(self) -> dict:
        c = self.store.counts()
        return {"version": self.generator.version, "candidate": self.generator.candidate,
                "queue": self.queue.q.qsize(), **c,
                "round": self.rounds.snapshot(), "errors": self.queue.errors[-3:]}
