"""The studio runtime: everything the Gradio app does, as plain methods tested without Gradio.

Owns the feedback store, the served generator with its pair queue, the round runner, snapshots and the
admin check. Every method validates its input and raises ValueError / PermissionError with a message a
person can act on; nothing is written when it raises.
"""

from __future__ import annotations

import hmac
import json
import shutil
import threading
import time
from pathlib import Path

from feedback.store import FeedbackStore
from rlcm.prompts import get_prompts

from .rounds import RoundRunner
from .serving import BASE, PairQueue, ServedGenerator
from .settings import StudioSettings

MAX_PROMPT = 300


class Studio:
    def __init__(self, settings: StudioSettings, start_workers: bool = True):
        self.settings = s = settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if not (s.data_dir / "feedback.db").exists() and (s.backup_dir or s.backup_repo):
            FeedbackStore.restore_latest(s.backup_dir or "", s.data_dir, repo_id=s.backup_repo)
            self._restore_files()
        self.store = FeedbackStore(s.data_dir)
        self.generator = ServedGenerator(s)
        self.prompts = get_prompts(s.prompt_set, "train", 64 if s.prompt_set == "toy" else None)
        self.compare_prompts = get_prompts(s.prompt_set, "heldout", s.compare_prompts, seed=7)[: s.compare_prompts]
        self.rounds = RoundRunner(s, self.store, on_done=self._serve_round, compare=self._render_compare)
        self.queue = PairQueue(self.store, self.generator, self.prompts, s.queue_size, s.earlier_fraction,
                               reward_model=lambda: self.rounds.reward_model, candidates=s.pair_candidates)
        self._labels_at_last_round = self.store.counts()["labelled"]
        self._stop = threading.Event()
        self._restore_active()
        if start_workers:
            self.queue.start()
            self._resume_interrupted()
            if s.snapshot_every_s and (s.backup_dir or s.backup_repo):
                threading.Thread(target=self._snapshot_loop, daemon=True, name="snapshots").start()

    def close(self) -> None:
        self._stop.set()
        self.queue.stop()
        self.rounds.cancel()

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

    def rater_name(self, name: str | None, username: str | None = None) -> str:
        if username:
            return f"hf:{username}"
        name = (name or "").strip()
        if self.settings.rating == "open" and not name:
            return "anonymous"
        if not name:
            raise ValueError("enter your name before rating")
        if len(name) > 64:
            raise ValueError("name too long (at most 64 characters)")
        return name

    def next_pair(self) -> dict:
        """The next pair to rate (from the pre-generated queue), with its image paths."""
        pair = self.queue.get()
        return {**pair, "image_a": str(self.store.image_path(pair["a"])),
                "image_b": str(self.store.image_path(pair["b"]))}

    def vote(self, rater: str, sample_a: str, sample_b: str, choice: str, client_id: str) -> dict:
        """Record one judgement exactly once (a retried client_id is not counted again)."""
        row = self.store.record_comparison(sample_a, sample_b, choice, rater, client_id)
        self._maybe_auto_round()
        return row

    def undo(self, rater: str) -> dict | None:
        return self.store.undo_last(rater)

    def rater_counts(self, rater: str) -> tuple[int, int]:
        stats = {r["rater"]: r["comparisons"] for r in self.store.rater_stats()}
        return stats.get(rater, 0), self.store.counts()["comparisons"]

    def _maybe_auto_round(self) -> None:
        n = self.settings.auto_round_every
        labelled = self.store.counts()["labelled"]
        if n and labelled - self._labels_at_last_round >= n and not self.rounds.running:
            try:
                self.start_round(by="auto")
            except (RuntimeError, ValueError):
                pass

    # ------------------------------------------------------------ rounds

    def start_round(self, by: str) -> int:
        labelled = self.store.counts()["labelled"]
        if labelled < 8:
            raise ValueError(f"need at least 8 labelled pairs to fit a reward model, have {labelled}")
        self._labels_at_last_round = labelled
        return self.rounds.start(by)

    def cancel_round(self) -> bool:
        return self.rounds.cancel()

    def activate(self, version: str) -> str:
        """Serve the base model ("base") or a finished round ("round-N")."""
        if version == BASE:
            self.generator.activate(BASE, None)
        else:
            try:
                rid = int(version.removeprefix("round-"))
                row = self.store.get_round(rid)
            except (ValueError, KeyError):
                raise ValueError(f"unknown version {version!r}; valid: base or round-N of a finished round") from None
            if row["status"] != "done" or not row.get("lora_path") or not Path(row["lora_path"]).exists():
                raise ValueError(f"round {rid} has no finished LoRA (status {row['status']})")
            self.generator.activate(version, row["lora_path"])
        (self.settings.data_dir / "active.json").write_text(json.dumps({"version": version}))
        self.queue.flush()
        return version

    def _serve_round(self, rid: int, lora_dir: Path) -> None:
        self.activate(f"round-{rid}")

    def _restore_active(self) -> None:
        path = self.settings.data_dir / "active.json"
        if path.exists():
            version = json.loads(path.read_text()).get("version", BASE)
            if version != BASE:
                try:
                    self.activate(version)
                except ValueError:
                    path.unlink()

    def _resume_interrupted(self) -> None:
        for r in self.store.rounds():
            if r["status"] in ("running", "pending"):
                try:
                    self.rounds.start(by="resume", resume_id=r["id"])
                except RuntimeError:
                    pass
                return

    def versions(self) -> list[str]:
        return [BASE] + [f"round-{r['id']}" for r in self.store.rounds() if r["status"] == "done"]

    # ------------------------------------------------------------ compare

    def _render_compare(self, version: str, sample_fn) -> None:
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
            images = [Image.open(p).convert("RGB") for p in paths]
            row = {"version": version, "images": [str(p) for p in paths], "prompts": self.compare_prompts}
            if rm is not None:
                row["reward"] = float(rm.score(images, self.compare_prompts[: len(images)]).mean())
            if self.settings.prompt_set == "toy":
                from rlcm.toy.checker import fidelity

                row["fidelity"] = fidelity(images, self.compare_prompts[: len(images)])["score"]
            rows.append(row)
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
        path = self.settings.data_dir / "exports" / f"preferences-{time.strftime('%Y%m%d-%H%M%S')}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(self.store.export_parquet(path))

    def import_data(self, path: str) -> dict:
        return self.store.import_parquet(path)

    # ------------------------------------------------------------ settings

    EDITABLE = ("steps", "guidance", "round_epochs", "auto_round_every", "alignment_guard", "kl_coef")

    def update_settings(self, steps: int, guidance: float, round_epochs: int, auto_round_every: int,
                        alignment_guard: float | None = None, kl_coef: float | None = None) -> dict:
        s = self.settings
        old = {k: getattr(s, k) for k in self.EDITABLE}
        s.steps, s.guidance, s.round_epochs, s.auto_round_every = int(steps), float(guidance), int(round_epochs), \
            int(auto_round_every)
        if alignment_guard is not None:
            s.alignment_guard = float(alignment_guard)
        if kl_coef is not None:
            s.kl_coef = float(kl_coef)
        try:
            s.validate()
        except ValueError:
            for k, v in old.items():
                setattr(s, k, v)
            raise
        self.queue.flush()
        return {k: getattr(s, k) for k in self.EDITABLE}

    # ------------------------------------------------------------ durability

    def snapshot(self) -> str | None:
        s = self.settings
        if not (s.backup_dir or s.backup_repo):
            return None
        path = self.store.snapshot(s.backup_dir or s.data_dir / "backup", repo_id=s.backup_repo)
        if s.backup_dir:  # rounds (LoRAs, checkpoints), reward models and the active version travel too
            dst = Path(s.backup_dir) / "studio"
            for name in ("rounds", "reward_models", "compare"):
                src = s.data_dir / name
                if src.exists():
                    shutil.copytree(src, dst / name, dirs_exist_ok=True)
            if (s.data_dir / "active.json").exists():
                dst.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s.data_dir / "active.json", dst / "active.json")
        return str(path)

    def _restore_files(self) -> None:
        s = self.settings
        src = Path(s.backup_dir or "") / "studio"
        if s.backup_dir and src.exists():
            shutil.copytree(src, s.data_dir, dirs_exist_ok=True)

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.settings.snapshot_every_s):
            try:
                self.snapshot()
            except Exception as e:  # a failed snapshot must not stop the studio
                print(f"snapshot failed: {e}")

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        c = self.store.counts()
        return {"version": self.generator.version, "queue": self.queue.q.qsize(), **c,
                "round": self.rounds.snapshot(), "errors": self.queue.errors[-3:]}
