"""Fine-tune rounds in the background: refit the reward model, run RLCM against it from the served version,
and hand the result over as a *candidate* (or reject it at once when automatic checks fail).

A round's state lives in the feedback store (status, verdict, reward-model version, LoRA path, metrics) and
its files under `data_dir/rounds/<id>/` (trainer checkpoint, LoRA, compare images). A crash leaves the round
`running` in the store; the next start resumes it from its checkpoint. A failure marks it `failed` and
changes nothing that is served. Whether a candidate is served is decided by people's votes (studio.gate).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlcm.pipelines import pick_device

from . import checks
from .settings import ROUND_IMAGES_PER_PROMPT, StudioSettings, write_json

if TYPE_CHECKING:  # torch and diffusers load when a round starts, not when the studio imports this module
    from rlcm.trainer import RLCMConfig

GUARD_PAIRS = 64  # rated pairs on which the alignment guard is scaled to the reward model (relative weight)


def replace_lora(dst: Path, src: Path) -> None:
    """`dst` becomes a copy of the LoRA directory `src` (without the keeper's note): copied beside it first,
    then swapped in, so `dst` holds one epoch's weights or the other's, never a mix."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(FidelityKeeper.NOTE))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


TRAINER_NICE = 10  # added to a round thread's niceness; the web server's and the pair queue's threads keep theirs


def yield_cpu(nice: int = TRAINER_NICE) -> None:
    """Lower this thread's CPU priority: people rate while a round trains, and on a 2-core CPU the trainer's
    threads otherwise delay the next pair (browser median 298-342 ms, 160-277 ms at nice 10; RESULTS, "Rate
    tab latency"). On Linux niceness is per thread and inherited by the threads it starts (torch's intra-op
    pool), and no other thread is slowed; elsewhere this does nothing."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


class RoundRunner:
    def __init__(self, settings: StudioSettings, store, on_done, start_adapter=lambda: ("base", None),
                 before_load=lambda: None):
        self.settings, self.store = settings, store
        # callback(round_id, lora_dir, reason, fallback) once a round has trained: reason says why it fails the
        # automatic checks on its numbers (None: it goes on to the image checks and the vote); fallback is an
        # earlier saved (epoch, lora_dir) to step back to if the handed-over one loses fidelity on new prompts
        self.on_done = on_done
        # () -> (served version, its adapter.safetensors or None for base): rounds build on what is served
        self.start_adapter = start_adapter
        # () -> None, called before the trainer loads: its load and epoch-0 evaluation take the CPU for 6-19 s on 2
        # cores, and every vote over 2 s in bench/rate_latency.py came then, with the pair queue empty
        self.before_load = before_load
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified on every progress change (`wait_for`)
        self.thread: threading.Thread | None = None
        self.cancel_event = threading.Event()
        self.progress: dict = {"state": "idle"}
        self.reward_model = None  # the latest fitted or imported reward model
        self.reward_model_labels = 0  # labels in the store when it was fitted (a running round refits after more)
        self.eval_renders = EvalRenders()  # the keepers' evaluation images, shared by the rounds of this studio

    # ------------------------------------------------------------ control

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, by: str, resume_id: int | None = None, reward_model=None, fit_seconds: float = 0.0) -> int:
        """Start a round in the background (or resume `resume_id`); `reward_model` skips the refit (the caller's
        fit took `fit_seconds`, counted in the round's stage times)."""
        with self.lock:
            if self.running:
                raise RuntimeError("a fine-tune round is already running")
            if resume_id is None:
                version, init = self.start_adapter()
                rid = self.store.create_round({"by": by, "settings": _settings_dict(self.settings),
                                               "init_version": version, "init_lora": str(init) if init else None})
                if reward_model is not None:
                    self.store.update_round(rid, reward_model_version=reward_model.version)
            else:
                rid = resume_id
            self.cancel_event.clear()
            self.progress = {"state": "starting", "round": rid, "rows": [], "epoch": 0, "waiting_on": None,
                             "epochs": self.settings.round_epochs, "started": time.time(), "state_since": time.time(),
                             "stage_seconds": {"fitting reward model": fit_seconds} if fit_seconds else {}}
            self.changed.notify_all()
            self.thread = threading.Thread(target=self._run, args=(rid,), name=f"round-{rid}", daemon=True)
            self.thread.start()
            return rid

    def cancel(self) -> bool:
        if not self.running:
            return False
        self.cancel_event.set()
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s for the round's thread to end (a cancelled round stops at its next epoch);
        True once none runs. An interpreter that exits with the thread inside torch aborts."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running

    def snapshot(self) -> dict:
        """A copy of the progress for the UI (handlers run in a thread pool)."""
        with self.lock:
            return self._copy()

    def _copy(self) -> dict:  # the caller holds the lock
        return {**self.progress, "rows": list(self.progress.get("rows", []))}

    def wait_for(self, until, timeout: float) -> dict | None:
        """Block until `until(progress)` holds (checked on every change), up to `timeout` s: a copy of the progress
        that satisfied it, or None on timeout."""
        with self.changed:
            return self._copy() if self.changed.wait_for(lambda: until(self.progress), timeout) else None

    def set_state(self, state: str, waiting_on: str | None = None) -> None:
        """What the Train tab says the round does now; `waiting_on`: the version on trial whose verdict the
        finished round waits for (it needs people's votes, not time), None once it goes on."""
        self._set(state=state, waiting_on=waiting_on)

    def _set(self, **kw) -> None:
        with self.lock:
            if "state" in kw and kw["state"] != self.progress.get("state"):
                self._close_stage()
            self.progress.update(kw)
            self.changed.notify_all()

    def _close_stage(self) -> None:
        """Add the time since the current state began to its stage's total (the caller holds the lock)."""
        if "state_since" not in self.progress:  # idle: no round's clock runs
            return
        now, stages = time.time(), self.progress["stage_seconds"]
        stage = stage_name(self.progress.get("state", ""))
        stages[stage] = stages.get(stage, 0.0) + now - self.progress["state_since"]
        self.progress["state_since"] = now

    def _finish(self, rid: int, **kw) -> None:
        """End the round in state `kw["state"]`: first add how long it spent in each stage to its metrics (where a
        round's minutes go: the History table and the live-loop reports show them), then say it ended, the
        thread's last act (whoever waits for the end may start the next round at once)."""
        with self.lock:
            self._close_stage()
            record = {k: round(v, 1) for k, v in self.progress.get("stage_seconds", {}).items()}
        try:
            metrics = self.store.get_round(rid).get("metrics") or {}
            self.store.update_round(rid, metrics={**metrics, "stage_seconds": record})
        except Exception:  # timings are for people; a store error here must not mask how the round ended
            pass
        self._set(**kw)

    # ------------------------------------------------------------ the round

    def fit_reward_model(self):
        import reward_model
        from rlcm.clip import load_clip

        clip = load_clip(self.settings.clip, device="cpu", pretrained=self.settings.clip_pretrained)
        labels = self.store.counts()["labelled"]
        rm, metrics = reward_model.fit(self.store, clip, reward_model.FitConfig())
        out = self.settings.data_dir / "reward_models" / rm.version
        directory, zip_path = reward_model.export(rm, out, metrics)
        self.reward_model, self.reward_model_labels = rm, labels
        write_json(self.settings.data_dir / "reward_model.json", {"version": rm.version})
        return rm, metrics, directory, zip_path

    def _run(self, rid: int) -> None:
        from rlcm.trainer import RLCMTrainer, resume_config

        yield_cpu()
        s = self.settings
        out = s.data_dir / "rounds" / str(rid)
        try:
            row = self.store.get_round(rid)
            self.store.update_round(rid, status="running")
            self._set(state="fitting reward model")
            rm_dir = row.get("reward_model_version") and s.data_dir / "reward_models" / row["reward_model_version"]
            if rm_dir and Path(rm_dir).exists():  # resuming, or fitted by the caller: keep that reward model
                import reward_model

                if self.reward_model is None or self.reward_model.version != row["reward_model_version"]:
                    # a resumed round: its model was fitted on fewer labels than there are now, by how many unknown
                    self.reward_model = reward_model.load(rm_dir)
                    self.reward_model_labels = self.store.counts()["labelled"]
                rm = self.reward_model
                metrics = rm.metrics or {}
            else:
                rm, metrics, rm_dir, _ = self.fit_reward_model()
            rm_metrics = {k: metrics.get(k) for k in RM_KEYS}
            self.store.update_round(rid, reward_model_version=rm.version, metrics={"reward_model": rm_metrics})
            self._set(state="waiting for the pair queue", reward_model=rm_metrics)
            self.before_load()
            self._set(state="training")
            start = row.get("config") or {}  # the served version when the round was created
            init = start.get("init_lora")
            # a resumed round keeps the settings it started with
            cfg = resume_config(round_config(s, out, rid, init if init and Path(init).exists() else None))
            self._set(epochs=cfg.epochs)
            trainer = RLCMTrainer(cfg, reward_fn=self._scorer(rm), callbacks=[self._on_event])
            keeper = FidelityKeeper(trainer, out / "lora-kept", keep_every(cfg.epochs), self.eval_renders)
            refits: list[dict] = []  # the round's refits: {"epoch", "labels", "version", "used", model metrics}
            fitted_at = self.reward_model_labels
            trainer.callbacks += [keeper, lambda e: self._maybe_refit(e, trainer, rid, fitted_at, refits)]
            trainer.train(stop=self.cancel_event)
            keeper.select(stop=self.cancel_event)
            with self.lock:  # the curve's held-out points: the keeper's evaluations come after the epochs
                self.progress["rows"] = self.progress.get("rows", []) + [
                    {k: r[k] for k in ("epoch", "eval_reward_mean", "eval_fidelity") if k in r}
                    for r in trainer.history if "eval_reward_mean" in r]
                self.changed.notify_all()
            if self.cancel_event.is_set():
                self.store.update_round(rid, status="cancelled")
                self._finish(rid, state="cancelled")
                return
            ev = [r for r in trainer.history if "eval_reward_mean" in r]
            handed = ev[-1] if ev else {}
            if keeper.kept is not None and keeper.kept["epoch"] < trainer.epoch:  # later epochs lost fidelity
                handed = next(r for r in ev if r["epoch"] == keeper.kept["epoch"])
                replace_lora(out / "lora", out / "lora-kept")
            before, after = (ev[0]["eval_reward_mean"] if ev else None), handed.get("eval_reward_mean")
            swaps = [r for r in refits if r["used"]]
            if swaps:  # the keeper's evaluations, all after training, used the last reward model
                rm_metrics = {k: swaps[-1].get(k) for k in RM_KEYS}
            result = {"reward_model": rm_metrics, "guard_weight": getattr(trainer.reward_fn, "guard_weight", 0.0),
                      "swap_weight": getattr(trainer.reward_fn, "swap_weight", 0.0),
                      "epochs": trainer.epoch, "epoch_served": handed.get("epoch", trainer.epoch),
                      "train_seconds": trainer.train_seconds, "reward_before": before, "reward_after": after}
            if swaps:
                result["reward_model_refits"] = [{k: r.get(k) for k in ("epoch", "n_pairs", "version", "guard_weight")}
                                             for r in swaps]
            if ev and "eval_fidelity" in ev[0]:
                result.update(fidelity_before=ev[0]["eval_fidelity"], fidelity_after=handed["eval_fidelity"],
                              fidelity_base=keeper.base, eval_renders_reused=keeper.reused)
            self.store.update_round(rid, status="done", lora_path=str(out / "lora"), metrics=result)
            self._set(state="checking", result=result)
            reason = checks.reject_reason(trainer.history, out / "lora", result)
            verdict, reason = self.on_done(rid, out / "lora", reason, keeper.fallback(result["epoch_served"]))
            keeper.clean()
            self._finish(rid, state="done", verdict=verdict, verdict_reason=reason)
        except Exception as e:  # the round fails; the served model and the database stay as they were
            self.store.update_round(rid, status="failed", error=f"{type(e).__name__}: {e}")
            self._finish(rid, state="failed", error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=5))

    def _scorer(self, rm):
        """The round's reward: `rm`'s score plus the alignment guard, scaled on the last rated pairs."""
        from rlcm.rewards import with_alignment_guard

        return with_alignment_guard(
            lambda images, prompts: rm.score(images, list(prompts)).cpu().numpy().astype(np.float32),
            rm.clip, self.settings.alignment_guard, pairs=self._recent_pairs(), swap_weight=self.settings.swap_guard)

    def _maybe_refit(self, e: dict, trainer, rid: int, fitted_at: int, refits: list[dict]) -> None:
        """Trainer callback: after an epoch, once `round_rm_refresh` labels arrived since the round's reward model
        was fitted, refit it on all labels and train the remaining epochs on the new one, if it beats chance (else
        the round goes on with the model it has). A round that starts at 10 labels trains while people rate
        dozens more: its later epochs learn from them."""
        every, labelled = self.settings.round_rm_refresh, self.store.counts()["labelled"]
        since = refits[-1]["labels"] if refits else fitted_at
        if (not every or e["type"] != "epoch" or e["epoch"] >= trainer.cfg.epochs or labelled - since < every
                or self.cancel_event.is_set()):
            return
        self.set_state("fitting reward model")  # its own line in the round's time by stage
        try:
            rm, metrics, _, _ = self.fit_reward_model()
        except (OSError, RuntimeError, ValueError):
            # the round goes on with the model it has; the next try comes `every` labels later
            refits.append({"epoch": e["epoch"], "labels": labelled, "version": None, "used": False})
            return
        finally:
            self.set_state("training")
        used, summary = metrics.get("better_than_chance", True), {k: metrics.get(k) for k in RM_KEYS}
        refits.append({"epoch": e["epoch"], "labels": self.reward_model_labels, "version": rm.version, "used": used,
                       **summary})
        if not used:
            return
        trainer.set_reward_fn(scorer := self._scorer(rm))
        refits[-1]["guard_weight"] = getattr(scorer, "guard_weight", 0.0)
        self.store.update_round(rid, reward_model_version=rm.version)  # a resumed round goes on with this one
        with self.lock:
            self.progress["reward_model"] = summary
            self.progress["rows"] = self.progress.get("rows", []) + [
                {"epoch": e["epoch"], "reward_model_refit": metrics.get("n_pairs")}]
            self.changed.notify_all()

    def _recent_pairs(self, n: int = GUARD_PAIRS) -> list:
        """The last `n` rated pairs as (image_a, image_b, prompt): where the guard's weight is measured."""
        rows = self.store.comparisons()[-n:]
        return [(self.store.load_image(r["sample_a"]), self.store.load_image(r["sample_b"]), r["prompt"])
                for r in rows]

    def _on_event(self, e: dict) -> None:
        if e["type"] == "epoch":
            with self.lock:
                self.progress["epoch"] = e["epoch"]
                self.progress["epoch_at"] = time.time()
                self.progress["rows"] = self.progress.get("rows", []) + [
                    {k: e[k] for k in ("epoch", "reward_mean", "eval_reward_mean", "eval_fidelity") if k in e}]
                self.changed.notify_all()
        elif e["type"] == "resumed":
            self._set(epoch=e["epoch"], resumed_at_epoch=e["epoch"])


def stage_name(state: str) -> str:
    """The stage a progress state belongs to: "waiting for people's votes on round-3" -> "waiting for votes"."""
    return "waiting for votes" if state.startswith("waiting for people's votes") else state


def round_epochs(s: StudioSettings, init_lora: str | None = None) -> int:
    """Epochs of a round from `init_lora` (None: from the base, which trains `round_epochs_base_factor` x longer)."""
    return s.round_epochs if init_lora else max(1, round(s.round_epochs * s.round_epochs_base_factor))


def round_config(s: StudioSettings, out: Path, rid: int, init_lora: str | None = None) -> RLCMConfig:
    """The RLCMConfig of round `rid` (`init_lora`: the served adapter it starts from, None for the base)."""
    from rlcm.trainer import RLCMConfig

    device = pick_device(s.device)  # as the served pipeline decides it: unset on a CUDA machine is CUDA
    epochs = round_epochs(s, init_lora)
    return RLCMConfig(
        model=s.model, lcm_lora=s.lcm_lora, reward="preference", prompt_set=s.prompt_set,
        num_steps=s.steps, guidance_scale=s.guidance, epochs=epochs,
        prompts_per_epoch=s.round_prompts, images_per_prompt=ROUND_IMAGES_PER_PROMPT,
        train_prompts=s.round_train_prompts,
        sample_batch_size=s.round_batch_size, train_batch_size=s.round_batch_size,
        # no evaluation while training: the keeper evaluates its saved epochs after it, from the last back
        eval_every=0, eval_prompts=s.round_eval_prompts, eval_prompt_seed=EVAL_PROMPT_SEED, output_dir=str(out),
        seed=rid + 1000 * s.round_seed, init_lora=init_lora, device=device, checkpoint_every=2,
        mixed_precision="fp16" if device.startswith("cuda") else "no",
        kl_coef=s.kl_coef, kl_units=s.kl_units, lr=s.round_lr, lr_warmup_epochs=s.round_lr_warmup if init_lora else 0)


def keep_every(epochs: int) -> int:
    """Epochs between the LoRAs a round's keeper saves (its candidates: 4 of them, the last epoch one)."""
    return max(1, epochs // 4)


class EvalRenders:
    """The images of a round's held-out evaluation, kept for the next rounds: the base model's, and each evaluated
    epoch's, under the digest of its LoRA weights. Rounds evaluate the same prompts and seeds (`EVAL_PROMPT_SEED`),
    so a round from the served version finds its start (the handed-over epoch of the round it comes from) and the
    base already rendered, and only scores them under its own reward model: two of a chained round's three
    evaluations were renders of images the studio had made before (RESULTS, "Keeper renders"). `size` sets are
    kept, the base's and the newest versions' (on a real model a set of 256 images at 512 px is about 200 MB)."""

    def __init__(self, size: int = 3):
        self.size, self.sets, self.hits, self.misses = size, {}, 0, 0
        self.lock = threading.Lock()

    @staticmethod
    def key(trainer, weights: str) -> tuple:
        """`weights` ("base" or a LoRA digest) with what else decides the images: model, sampler and the prompts."""
        c = trainer.cfg
        prompts, seeds = trainer.eval_set()
        return (weights, c.model, c.lcm_lora, c.num_steps, c.guidance_scale, c.sample_batch_size, c.mixed_precision,
                str(trainer.policy.device), str(trainer.policy.dtype), tuple(prompts), tuple(seeds))

    def get(self, key: tuple) -> list | None:
        with self.lock:
            images = self.sets.pop(key, None)
            if images is not None:
                self.sets[key] = images  # the newest again
            self.hits, self.misses = self.hits + (images is not None), self.misses + (images is None)
            return images

    def put(self, key: tuple, images: list) -> None:
        with self.lock:
            self.sets.pop(key, None)
            self.sets[key] = images
            while len(self.sets) > self.size:  # the oldest version's set first: every round needs the base's
                versions = [k for k in self.sets if k[0] != "base"]
                self.sets.pop(versions[0] if versions else next(iter(self.sets)))


EVAL_PROMPT_SEED = 1  # every round's keeper evaluates the same held-out draw (EvalRenders)


class FidelityKeeper:
    """Picks the epoch a round hands over: the latest of its candidate epochs (every `every`-th and the last)
    whose toy prompt fidelity passes the studio's confirmation rule on the round's own held-out images
    (`checks.confirm_reason`: at least one standard error above checks.KEEP_FIDELITY_DROP points below the
    *base* model, paired on the same prompts and seeds). A weak reward model is exploited more with every epoch,
    so a round hands over its best safe epoch instead of being thrown away. The rule is the confirmation's own:
    when the keeper judged by the mean alone (within 2 points, on 32 images), the round 1s of 5 live-loop runs all
    failed the confirmation (RESULTS, "Keeper: the round's own fidelity evaluation").

    As a trainer callback it only saves each candidate's LoRA (peft state, under `snapshots`). `select()`, after
    training, evaluates the start, the base and then the candidates from the last back, and stops at the first
    that passes: the epoch an evaluation after every candidate would pick, for 2 evaluations (`round_eval_prompts`)
    instead of 5 when the last epoch passes (each about an epoch's time on 2 CPU cores). Each evaluation is
    written into the trainer's history row of its epoch (epoch 0: the start). Without a fidelity score (real
    models) it evaluates the start and the last epoch (the reward before and after) and keeps nothing: the last
    epoch is handed over."""

    NOTE = "kept.json"

    def __init__(self, trainer, directory: Path, every: int, renders: EvalRenders | None = None):
        self.trainer, self.directory, self.every = trainer, Path(directory), every
        self.renders = renders if renders is not None else EvalRenders(size=0)
        self.reused = 0  # evaluations scored on images an earlier round rendered
        note = self.directory / self.NOTE  # a resumed round remembers what it kept
        self.kept = json.loads(note.read_text()) if note.is_file() else None
        self.base: float | None = None  # the base model's fidelity on the round's evaluation prompts
        self.base_images: list[float] | None = None  # ... per image
        self.snapshots = self.directory.with_name(self.directory.name + "-epochs")  # epoch-<n>/adapter.safetensors
        self.earlier_dir = self.directory.with_name(self.directory.name + "-earlier")  # epoch-<n>/: a step back

    def __call__(self, e: dict) -> None:
        if e["type"] != "epoch" or e["epoch"] == 0:
            return
        if e["epoch"] % self.every == 0 or e["epoch"] == self.trainer.cfg.epochs:
            self._save_state(self.snapshots / f"epoch-{e['epoch']}")

    def _unet(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.unet)

    def _save_state(self, directory: Path) -> None:
        from rlcm.lora import save_lora_state

        tmp = directory.with_name(directory.name + ".tmp")
        save_lora_state(self._unet(), tmp / "adapter.safetensors")
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)

    def _load(self, epoch: int, final: dict) -> None:
        """Put epoch `epoch`'s weights in the trainer: its saved LoRA, or `final` (the trainer's weights after
        training) for the last epoch of a round from before the keeper saved its candidates."""
        from rlcm.lora import load_lora_file, load_lora_into

        path = self.snapshots / f"epoch-{epoch}" / "adapter.safetensors"
        if path.is_file():
            load_lora_file(self._unet(), path)
        else:
            load_lora_into(self._unet(), final)

    @contextlib.contextmanager
    def _trained_weights_back(self):
        """The trainer's LoRA as training left it, put back after the block (which loads other epochs')."""
        from rlcm.lora import load_lora_into, lora_state

        final = {k: v.detach().clone() for k, v in lora_state(self._unet()).items()}
        try:
            yield final
        finally:
            load_lora_into(self._unet(), final)

    def _epochs(self) -> list[int]:
        """Candidate epochs with a saved LoRA, latest first."""
        found = [int(d.name.removeprefix("epoch-")) for d in self.snapshots.glob("epoch-*")
                 if (d / "adapter.safetensors").is_file()]
        return sorted((e for e in found if e <= self.trainer.epoch), reverse=True)

    def _render(self, base: bool = False) -> list:
        """The evaluation images of the current weights (of the base with `base`), rendered or from `renders`."""
        from rlcm.lora import lora_digest

        key = EvalRenders.key(self.trainer, "base" if base else lora_digest(self._unet()))
        images = self.renders.get(key)
        if images is None:
            images = self.trainer.render_eval(base)
            self.renders.put(key, images)
        else:
            self.reused += 1
        return images

    def _evaluate(self, epoch: int, base: bool = False) -> dict:
        """Evaluate the trainer's current weights (the base's with `base`) as `epoch`'s: the values go into that
        epoch's history row."""
        res = self.trainer.evaluate(images=self._render(base))
        row = next((r for r in self.trainer.history if r["epoch"] == epoch), None)
        if row is None:  # epoch 0: a round's trainer logs no row before its first epoch
            row = {"epoch": 0, "time": 0.0, "reward_queries": 0}
            self.trainer.history.insert(0, row)
        row.update(res)
        return res

    def select(self, stop: threading.Event | None = None) -> dict | None:
        """Evaluate and pick the handed-over epoch (see the class); returns what was kept, or None. Stops between
        two evaluations once `stop` is set (a round cancelled, the studio closing)."""
        with self._trained_weights_back() as final:
            return self._select(stop or threading.Event(), final)

    def _select(self, stop: threading.Event, final: dict) -> dict | None:
        t = self.trainer
        if stop.is_set():
            return self.kept
        if t.cfg.init_lora:
            from rlcm.lora import load_lora_file

            load_lora_file(self._unet(), t.cfg.init_lora)
            start = self._evaluate(0)
            base = t.evaluate(images=self._render(base=True)) if "eval_fidelity" in start else start
        else:  # a round from the base starts as the base (zero LoRA): one evaluation is both
            start = base = self._evaluate(0, base=True)
        self.base, self.base_images = base.get("eval_fidelity"), base.get("eval_fidelity_images")
        epochs = self._epochs() or [t.epoch]  # a round from before the keeper saved its candidates: the last
        for epoch in epochs:
            if stop.is_set():
                return self.kept
            self._load(epoch, final)
            res = self._evaluate(epoch)
            if self.base_images is None:  # no fidelity score: the last epoch, evaluated for its reward
                break
            change = checks.fidelity_change(self.base_images, res["eval_fidelity_images"], t.eval_set()[0])
            if checks.confirm_reason(change) is None:
                tmp = self.directory.with_name(self.directory.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                t.save_lora(tmp)
                self.kept = {"epoch": epoch, "eval_fidelity": res["eval_fidelity"], "base_fidelity": self.base,
                             "change_points": change["change_points"], "se_points": change["se_points"]}
                (tmp / self.NOTE).write_text(json.dumps(self.kept))
                shutil.rmtree(self.directory, ignore_errors=True)
                os.replace(tmp, self.directory)
                break
        log = Path(t.cfg.output_dir) / "log.jsonl"  # the evaluations too, in epoch order
        log.write_text("".join(json.dumps(row) + "\n" for row in t.history))
        return self.kept

    def fallback(self, before: int) -> tuple[int, Path] | None:
        """The candidate epoch nearest half of `before` (among those before it) and its LoRA, written under
        `earlier_dir`: where the studio steps back to when the handed-over epoch fails the fidelity confirmation
        on new prompts. It was not evaluated here (that would cost every round an evaluation for a step back that
        few take): the confirmation on new prompts judges it."""
        earlier = [e for e in self._epochs() if e < before]
        if not earlier:
            return None
        epoch = min(earlier, key=lambda e: (abs(e - before / 2), -e))
        dst = self.earlier_dir / f"epoch-{epoch}"
        shutil.rmtree(dst, ignore_errors=True)
        with self._trained_weights_back() as final:
            self._load(epoch, final)
            self.trainer.save_lora(dst)
        return epoch, dst

    def clean(self) -> None:
        """Disk: one LoRA per round stays."""
        shutil.rmtree(self.snapshots, ignore_errors=True)
        shutil.rmtree(self.earlier_dir, ignore_errors=True)


RM_KEYS = ("accuracy", "accuracy_ci", "accuracy_n", "n_test", "better_than_chance", "log_loss", "n_pairs", "n_raters")


def _settings_dict(s: StudioSettings) -> dict:
    d = asdict(s)
    d.pop("admin_password", None)
    d["data_dir"] = str(d["data_dir"])
    return d

