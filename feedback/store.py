"""The feedback store: prompts, samples, pairwise comparisons, raters and fine-tune rounds in one SQLite file.

Layout under `data_dir`: `feedback.db` (WAL) and `images/<sha256[:2]>/<sha256>.png`. Every write runs in
its own `BEGIN IMMEDIATE` transaction under a process-wide lock, with `synchronous=FULL`, so an
acknowledged rating survives a killed process; each thread gets its own connection.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image
from sqlite_utils import Database

from . import identity
from . import images as imgs
from .checks import MAX_CLIENT_ID, MAX_NAME, MAX_PROMPT, check_name, check_prompt  # noqa: F401 (re-exported)
from .pairs import PairPolicy, Uncertainty, candidate_pairs, choose_pair, pair_key

CHOICES = ("a", "b", "tie", "skip")
ROUND_STATUSES = ("pending", "running", "done", "failed", "cancelled")
ROUND_FIELDS = ("status", "config", "reward_model_version", "lora_path", "metrics", "finished_at", "error",
                "verdict", "verdict_reason")
# a finished ("done") round is a candidate until people's A/B votes (or an admin) promote or reject it
VERDICTS = ("candidate", "promoted", "rejected")
MAX_SEED = 2**63  # seeds are stored as SQLite INTEGER (signed 64-bit): 0 <= seed < 2**63


def now() -> str:
    """UTC timestamp in ISO 8601 with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_seed(seed) -> int:
    """A generation seed the store can keep (an int in [0, 2**63)); ValueError otherwise. Check before generating."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {str(seed)[:40]}")
    return seed


# ---------------------------------------------------------------- schema

def _m0001_initial(db: Database) -> None:
    db.execute("""CREATE TABLE prompts (
        id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL)""")
    db.execute("""CREATE TABLE samples (
        id TEXT PRIMARY KEY,                      -- sha256 of the canonical PNG bytes
        prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        seed INTEGER, steps INTEGER, guidance REAL,
        generator TEXT NOT NULL,                  -- generator version / round that made it
        width INTEGER NOT NULL, height INTEGER NOT NULL, created_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX samples_prompt ON samples(prompt_id)")
    db.execute("CREATE TABLE raters (id TEXT PRIMARY KEY, created_at TEXT NOT NULL)")
    db.execute(f"""CREATE TABLE comparisons (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        client_id TEXT NOT NULL UNIQUE,           -- makes a retried submit a no-op
        sample_a TEXT NOT NULL REFERENCES samples(id),
        sample_b TEXT NOT NULL REFERENCES samples(id),
        prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        choice TEXT NOT NULL CHECK (choice IN {CHOICES}),
        rater TEXT NOT NULL REFERENCES raters(id),
        created_at TEXT NOT NULL,
        undone_at TEXT,                           -- set by undo_last; such rows count nowhere
        CHECK (sample_a != sample_b))""")
    db.execute("CREATE INDEX comparisons_rater ON comparisons(rater, id)")
    db.execute(f"""CREATE TABLE rounds (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        status TEXT NOT NULL CHECK (status IN {ROUND_STATUSES}),
        config TEXT NOT NULL, reward_model_version TEXT, lora_path TEXT, metrics TEXT,
        created_at TEXT NOT NULL, finished_at TEXT, error TEXT)""")


def _m0003_round_verdicts(db: Database) -> None:
    db.execute("ALTER TABLE rounds ADD COLUMN verdict TEXT")
    db.execute("ALTER TABLE rounds ADD COLUMN verdict_reason TEXT")
    # rounds finished before verdicts existed were served as soon as they were done
    db.execute("UPDATE rounds SET verdict = 'promoted', verdict_reason = 'served before verdicts existed'"
               " WHERE status = 'done'")


def _m0004_rater_tokens(db: Database) -> None:
    # a typed name is claimed by its first vote; only the sha256 of its secret token is kept
    db.execute("""CREATE TABLE rater_tokens (
        name TEXT PRIMARY KEY,                    -- normalised name (feedback.identity.normalise_name)
        skeleton TEXT NOT NULL UNIQUE,            -- look-alike key: one claim per skeleton
        token_hash TEXT NOT NULL, created_at TEXT NOT NULL)""")
    # retention asks "is this sample in any comparison", oldest first
    db.execute("CREATE INDEX comparisons_sample_a ON comparisons(sample_a)")
    db.execute("CREATE INDEX comparisons_sample_b ON comparisons(sample_b)")
    db.execute("CREATE INDEX samples_created ON samples(created_at)")


def _m0005_sample_source_uid(db: Database) -> None:
    # an imported image keeps the uid its source file gave it (e.g. Pick-a-Pic's), so exports can be joined back
    db.execute("ALTER TABLE samples ADD COLUMN source_uid TEXT")
    db.execute("CREATE INDEX samples_source_uid ON samples(source_uid)")


MIGRATIONS: dict[str, Callable[[Database], None]] = {  # applied in order, once
    "0001_initial": _m0001_initial, "0003_round_verdicts": _m0003_round_verdicts,
    "0004_rater_tokens": _m0004_rater_tokens, "0005_sample_source_uid": _m0005_sample_source_uid}


# ---------------------------------------------------------------- store

class FeedbackStore:
    """Thread-safe access to one feedback database; see the module docstring for the layout."""

    def __init__(self, data_dir: str | Path, busy_timeout_s: float = 30.0):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "feedback.db"
        self.images_dir = self.data_dir / "images"
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.RLock()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
            done = {r["name"] for r in db.query("SELECT name FROM _migrations")}
            for name, migrate in MIGRATIONS.items():
                if name not in done:
                    migrate(db)
                    db.execute("INSERT INTO _migrations VALUES (?, ?)", [name, now()])

    # -- connections and transactions

    def _db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            db = Database(conn, execute_plugins=False)
            self._local.db = db
            with self._conns_lock:
                self._conns.append(conn)
        return db

    @contextmanager
    def _write(self) -> Iterator[Database]:
        """One write transaction, taken immediately so concurrent writers queue instead of deadlocking."""
        db = self._db()
        with self._write_lock:
            if db.conn.in_transaction:  # nested: part of the caller's transaction
                yield db
                return
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
                raise
            db.conn.execute("COMMIT")

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- samples

    def _prompt_id(self, db: Database, text: str) -> int:
        db.execute("INSERT OR IGNORE INTO prompts (text, created_at) VALUES (?, ?)", [text, now()])
        return db.execute("SELECT id FROM prompts WHERE text = ?", [text]).fetchone()[0]

    def _insert_sample(self, db: Database, sample_id: str, prompt: str, size: tuple[int, int], seed, steps,
                       guidance, generator: str, created_at: str | None = None) -> bool:
        """Insert a sample row whose image file already exists; False if the id was already stored."""
        pid = self._prompt_id(db, prompt)
        cur = db.execute(
            "INSERT OR IGNORE INTO samples (id, prompt_id, seed, steps, guidance, generator, width, height,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [sample_id, pid, seed, steps, guidance, generator, size[0], size[1], created_at or now()])
        return cur.rowcount == 1

    def add_sample(self, image: Image.Image, prompt: str, seed: int, steps: int, guidance: float,
                   generator: str = "base") -> str:
        """Store a generated image; its id is the sha256 of its canonical PNG bytes.

        Idempotent: adding the same pixels again returns the same id and keeps the first metadata
        (so identical images from two seeds or prompts are one sample, of the first prompt).
        """
        prompt = check_prompt(prompt)
        generator = check_name(generator, "generator")
        check_seed(seed)  # before the image file is written: a refused sample leaves nothing behind
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise ValueError(f"steps must be an int in [1, 1000], got {steps!r}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        data = imgs.png_bytes(image)
        sid = imgs.sha256(data)
        with self._write() as db:  # the file first, so a row always has its image
            imgs.write_atomic(imgs.image_path(self.images_dir, sid), data)
            self._insert_sample(db, sid, prompt, image.size, int(seed), int(steps), float(guidance), generator)
        return sid

    _SAMPLE_SQL = ("SELECT s.id, p.text AS prompt, s.prompt_id, s.seed, s.steps, s.guidance, s.generator,"
                   " s.width, s.height, s.created_at, s.source_uid FROM samples s JOIN prompts p ON p.id = s.prompt_id")

    def get_sample(self, sample_id: str) -> dict:
        rows = list(self._db().query(self._SAMPLE_SQL + " WHERE s.id = ?", [sample_id]))
        if not rows:
            raise KeyError(f"no sample {sample_id!r}")
        row = rows[0]
        row["path"] = str(imgs.image_path(self.images_dir, row["id"]))
        return row

    def samples(self, generator: str | None = None) -> list[dict]:
        where, params = ("WHERE s.generator = ?", [generator]) if generator else ("", [])
        return list(self._db().query(f"{self._SAMPLE_SQL} {where} ORDER BY s.created_at, s.id", params))

    def image_path(self, sample_id: str) -> Path:
        return imgs.image_path(self.images_dir, sample_id)

    def load_image(self, sample_id: str) -> Image.Image:
        path = self.image_path(sample_id)
        if not path.exists():
            raise KeyError(f"no image file for sample {sample_id!r} at {path}")
        with Image.open(path) as im:
            return im.convert("RGB")

    # -- comparisons

    _COMPARISON_SQL = ("SELECT c.id, c.client_id, c.sample_a, c.sample_b, p.text AS prompt, c.choice, c.rater,"
                       " c.created_at, c.undone_at, sa.generator AS generator_a, sb.generator AS generator_b"
                       " FROM comparisons c JOIN prompts p ON p.id = c.prompt_id"
                       " JOIN samples sa ON sa.id = c.sample_a JOIN samples sb ON sb.id = c.sample_b")

    def _comparison(self, db: Database, where: str, params: list) -> dict | None:
        rows = list(db.query(f"{self._COMPARISON_SQL} WHERE {where}", params))
        return rows[0] if rows else None

    def _insert_comparison(self, db: Database, sample_a: str, sample_b: str, choice: str, rater: str,
                           client_id: str, created_at: str | None = None) -> dict:
        """Validate and insert one comparison inside the caller's transaction; returns the row and `created`."""
        existing = self._comparison(db, "c.client_id = ?", [client_id])
        if existing is not None:
            if (pair_key(existing["sample_a"], existing["sample_b"]) != pair_key(sample_a, sample_b)
                    or existing["rater"] != rater):
                raise ValueError(f"client_id {client_id!r} was already used for another comparison "
                                 f"({existing['sample_a'][:12]}… vs {existing['sample_b'][:12]}… by {existing['rater']!r})")
            return {**existing, "created": False}
        if sample_a == sample_b:
            raise ValueError("a comparison needs two different samples, got the same id twice")
        rows = {r["id"]: r for r in db.query("SELECT id, prompt_id FROM samples WHERE id IN (?, ?)",
                                             [sample_a, sample_b])}
        missing = [s for s in (sample_a, sample_b) if s not in rows]
        if missing:
            raise ValueError(f"unknown sample id(s): {', '.join(map(repr, missing))}; add samples before rating them")
        if rows[sample_a]["prompt_id"] != rows[sample_b]["prompt_id"]:
            raise ValueError("the two samples belong to different prompts; only samples of one prompt are compared")
        db.execute("INSERT OR IGNORE INTO raters (id, created_at) VALUES (?, ?)", [rater, now()])
        cur = db.execute(
            "INSERT INTO comparisons (client_id, sample_a, sample_b, prompt_id, choice, rater, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [client_id, sample_a, sample_b, rows[sample_a]["prompt_id"], choice, rater, created_at or now()])
        return {**self._comparison(db, "c.id = ?", [cur.lastrowid]), "created": True}

    def record_comparison(self, sample_a: str, sample_b: str, choice: str, rater: str, client_id: str) -> dict:
        """Record that `rater` preferred a, b, a tie, or skipped the pair.

        A `client_id` seen before returns the stored row with `created=False` and writes nothing (a
        retried submit; the first answer wins). Invalid input raises ValueError and writes nothing.
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}")
        rater = check_name(rater, "rater", identity.MAX_STORED_RATER)
        client_id = check_name(client_id, "client_id", MAX_CLIENT_ID)
        with self._write() as db:
            return self._insert_comparison(db, sample_a, sample_b, choice, rater, client_id)

    def undo_last(self, rater: str) -> dict | None:
        """Retract `rater`'s most recent comparison (kept with `undone_at` set, excluded everywhere); None if none."""
        rater = check_name(rater, "rater", identity.MAX_STORED_RATER)
        with self._write() as db:
            row = self._comparison(db, "c.rater = ? AND c.undone_at IS NULL ORDER BY c.id DESC LIMIT 1", [rater])
            if row is None:
                return None
            row["undone_at"] = now()
            db.execute("UPDATE comparisons SET undone_at = ? WHERE id = ?", [row["undone_at"], row["id"]])
            return row

    # -- votes from the public (rater tokens, see identity.py)

    def _authorise(self, db: Database, rater: identity.Rater, claim: bool) -> str | None:
        """Check `rater` may act under its name inside the caller's transaction; returns the token to hand back.

        A signed-in name needs nothing more. A claimed typed name needs its token. An unclaimed one is claimed
        here (when `claim`) unless it looks like a claimed name or already has votes without a token (older
        data or an import): those are nobody's to take.
        """
        if rater.signed_in:
            if not rater.name.startswith(identity.SIGNED_IN_PREFIX):
                raise ValueError("a signed-in rater's name must come from identity.signed_in")
            return None
        name = identity.normalise_name(rater.name)
        if name != rater.name:
            raise ValueError("rater names must come from identity.typed (normalised)")
        row = db.execute("SELECT token_hash FROM rater_tokens WHERE name = ?", [name]).fetchone()
        if row is not None:
            if not identity.token_matches(rater.token, row[0]):
                raise PermissionError(f"the name {name!r} is taken: vote from the browser that first used it "
                                      "(it keeps the rater_token), or choose another name")
            return rater.token
        if not claim:
            return None
        sk = identity.skeleton(name)
        clash = db.execute("SELECT name FROM rater_tokens WHERE skeleton = ?", [sk]).fetchone()
        if clash is None:  # names from before tokens (or imported) count as claimed by nobody-can-prove
            clash = next(((r,) for (r,) in db.execute("SELECT id FROM raters")
                          if not r.startswith(identity.SIGNED_IN_PREFIX) and identity.skeleton(r) == sk), None)
        if clash is not None:
            same = clash[0] == name
            raise PermissionError(f"the name {name!r} " + ("already has votes without a rater_token"
                                  if same else f"looks too much like {clash[0]!r}, a name already in use")
                                  + "; choose another name")
        # a well-formed token the browser already holds (say, from before a restore) is kept, else a new one
        token = rater.token if identity.well_formed_token(rater.token) else identity.new_token()
        db.execute("INSERT INTO rater_tokens (name, skeleton, token_hash, created_at) VALUES (?, ?, ?, ?)",
                   [name, sk, identity.token_hash(token), now()])
        return token

    def vote(self, rater: identity.Rater, sample_a: str, sample_b: str, choice: str, client_id: str) -> dict:
        """Record a judgement from the public; returns the row with `created` and `rater_token`.

        The first vote under a typed name claims it and returns a new secret `rater_token`; every later vote
        or undo under that name must present it (PermissionError otherwise). A retried `client_id` and a
        repeat of a pair this rater already judged (either order, not undone) write nothing and return the
        stored row with `created=False` (the first answer stands; undo it to answer again). Nothing is
        written when it raises, not even the claim.
        """
        if not isinstance(rater, identity.Rater):
            raise ValueError("rater must be a feedback.identity.Rater (identity.typed or identity.signed_in)")
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}")
        client_id = check_name(client_id, "client_id", MAX_CLIENT_ID)
        if not isinstance(sample_a, str) or not isinstance(sample_b, str):
            raise ValueError("sample ids must be text")
        with self._write() as db:
            token = self._authorise(db, rater, claim=True)
            retry = self._comparison(db, "c.client_id = ?", [client_id])
            if retry is not None:  # a resubmit: the stored row; someone else's id: refused without saying whose
                if retry["rater"] != rater.name or pair_key(retry["sample_a"], retry["sample_b"]) != pair_key(
                        sample_a, sample_b):
                    raise ValueError("this client_id was already used for another comparison; send a fresh one")
                return {**retry, "created": False, "rater_token": token}
            repeat = self._comparison(
                db, "c.rater = ? AND c.undone_at IS NULL AND ((c.sample_a = ? AND c.sample_b = ?)"
                " OR (c.sample_a = ? AND c.sample_b = ?)) ORDER BY c.id LIMIT 1",
                [rater.name, sample_a, sample_b, sample_b, sample_a])
            if repeat is not None:
                return {**repeat, "created": False, "rater_token": token}
            row = self._insert_comparison(db, sample_a, sample_b, choice, rater.name, client_id)
            return {**row, "rater_token": token}

    def undo_vote(self, rater: identity.Rater, comparison_id: int | None = None) -> dict | None:
        """Retract the caller's latest live judgement (or `comparison_id`, which must be theirs); None if none.

        Needs the name's token like `vote`; never touches anyone else's votes.
        """
        if not isinstance(rater, identity.Rater):
            raise ValueError("rater must be a feedback.identity.Rater (identity.typed or identity.signed_in)")
        if comparison_id is not None and (isinstance(comparison_id, bool) or not isinstance(comparison_id, int)):
            raise ValueError(f"comparison_id must be an int, got {comparison_id!r}")
        with self._write() as db:
            self._authorise(db, rater, claim=False)
            claimed = rater.signed_in or db.execute("SELECT 1 FROM rater_tokens WHERE name = ?",
                                                    [rater.name]).fetchone() is not None
            where, params = "c.rater = ? AND c.undone_at IS NULL", [rater.name]
            if comparison_id is not None:
                where, params = where + " AND c.id = ?", params + [comparison_id]
            row = self._comparison(db, where + " ORDER BY c.id DESC LIMIT 1", params)
            if row is None:
                return None
            if not claimed:  # votes without a token (older data, imports) can't be proven anyone's
                raise PermissionError(f"the votes under {rater.name!r} have no rater_token; they cannot be undone")
            row["undone_at"] = now()
            db.execute("UPDATE comparisons SET undone_at = ? WHERE id = ?", [row["undone_at"], row["id"]])
            return row

    def rater_claimed(self, name: str) -> bool:
        """Whether a typed name has been claimed (its votes need its token)."""
        return self._db().execute("SELECT 1 FROM rater_tokens WHERE name = ?",
                                  [identity.normalise_name(name)]).fetchone() is not None

    def comparisons(self, include_skips: bool = False, between: tuple[str, str] | None = None,
                    same_seed: bool = False) -> list[dict]:
        """Live (not undone) comparisons in the order they were made, with prompt text and generators;
        with `between`, only those of a sample of one generator against one of the other (either side); with
        `same_seed`, only pairs of one seed, steps and guidance (an A/B pair: two versions of one image)."""
        where, params = "c.undone_at IS NULL" + ("" if include_skips else " AND c.choice != 'skip'"), []
        if between is not None:
            where += (" AND ((sa.generator = ? AND sb.generator = ?) OR (sa.generator = ? AND sb.generator = ?))")
            params = [between[0], between[1], between[1], between[0]]
        if same_seed:  # NULL seeds (imported samples) match nothing
            where += " AND sa.seed = sb.seed AND sa.steps = sb.steps AND sa.guidance = sb.guidance"
        return list(self._db().query(f"{self._COMPARISON_SQL} WHERE {where} ORDER BY c.id", params))

    def judged_pairs(self, rater: str) -> set[tuple[str, str]]:
        rows = self._db().execute("SELECT sample_a, sample_b FROM comparisons WHERE rater = ? AND undone_at IS NULL",
                                  [rater]).fetchall()
        return {pair_key(a, b) for a, b in rows}

    def next_pair(self, rater: str, generator: str | None = None, uncertainty: Uncertainty | None = None,
                  rng: random.Random | int | None = None, policy: PairPolicy = PairPolicy()) -> tuple[dict, dict] | None:
        """The next pair to show `rater`, or None when every eligible pair has been judged by them.

        Pairs are two samples of one prompt with different seeds, never a pair this rater judged in
        either order (an undone judgement frees its pair again). `generator` names the current
        generator (default: the one that made the newest sample); it is paired with earlier generators
        `policy.cross_fraction` of the time. With `uncertainty`, the most uncertain of a random set of
        candidates wins.
        """
        rater = check_name(rater, "rater", identity.MAX_STORED_RATER)
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        samples = self.samples()
        if generator is None and samples:
            generator = max(samples, key=lambda s: (s["created_at"], s["id"]))["generator"]
        cands = candidate_pairs(samples, self.judged_pairs(rater), generator, rng, policy.max_candidates)
        pair = choose_pair(cands, rng, uncertainty, policy)
        return None if pair is None else (self.get_sample(pair[0]), self.get_sample(pair[1]))

    # -- summaries

    def counts(self) -> dict:
        """Numbers of samples, prompts, live comparisons (`labelled` excludes skips), raters, each choice, undone."""
        q = lambda sql: self._db().execute(sql).fetchone()[0]  # noqa: E731
        out = {"samples": q("SELECT count(*) FROM samples"), "prompts": q("SELECT count(*) FROM prompts"),
               "comparisons": q("SELECT count(*) FROM comparisons WHERE undone_at IS NULL"),
               "labelled": q("SELECT count(*) FROM comparisons WHERE undone_at IS NULL AND choice != 'skip'"),
               "raters": q("SELECT count(DISTINCT rater) FROM comparisons WHERE undone_at IS NULL"),
               "undone": q("SELECT count(*) FROM comparisons WHERE undone_at IS NOT NULL")}
        per = dict(self._db().execute(
            "SELECT choice, count(*) FROM comparisons WHERE undone_at IS NULL GROUP BY choice").fetchall())
        out.update({c: per.get(c, 0) for c in CHOICES})
        return out

    def rater_stats(self) -> list[dict]:
        """Per rater: live comparisons, each choice, first and last time; most active first."""
        return list(self._db().query(
            "SELECT rater, count(*) AS comparisons, sum(choice = 'a') AS a, sum(choice = 'b') AS b,"
            " sum(choice = 'tie') AS tie, sum(choice = 'skip') AS skip, min(created_at) AS first_at,"
            " max(created_at) AS last_at FROM comparisons WHERE undone_at IS NULL"
            " GROUP BY rater ORDER BY comparisons DESC, rater"))

    # -- fine-tune rounds

    @staticmethod
    def _round_row(row: dict) -> dict:
        for k in ("config", "metrics"):
            row[k] = json.loads(row[k]) if row[k] is not None else None
        return row

    def create_round(self, config: dict) -> int:
        """A new round in status "pending"; `config` must be JSON-serialisable."""
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        with self._write() as db:
            cur = db.execute("INSERT INTO rounds (status, config, created_at) VALUES ('pending', ?, ?)",
                             [json.dumps(config), now()])
            return int(cur.lastrowid)

    def update_round(self, round_id: int, **fields) -> dict:
        """Set some of: status, config, reward_model_version, lora_path, metrics, finished_at, error, verdict,
        verdict_reason.

        Moving to done/failed/cancelled sets `finished_at` unless given.
        """
        bad = sorted(set(fields) - set(ROUND_FIELDS))
        if bad:
            raise ValueError(f"unknown round field(s) {bad}; valid: {', '.join(ROUND_FIELDS)}")
        if "status" in fields:
            if fields["status"] not in ROUND_STATUSES:
                raise ValueError(f"status must be one of {', '.join(ROUND_STATUSES)}; got {fields['status']!r}")
            if fields["status"] in ("done", "failed", "cancelled"):
                fields.setdefault("finished_at", now())
        if fields.get("verdict") not in (None, *VERDICTS):
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}; got {fields['verdict']!r}")
        for k in ("config", "metrics"):
            if k in fields and fields[k] is not None:
                fields[k] = json.dumps(fields[k])
        with self._write() as db:
            self.get_round(round_id)
            if fields:
                sets = ", ".join(f"{k} = ?" for k in fields)
                db.execute(f"UPDATE rounds SET {sets} WHERE id = ?", [*fields.values(), round_id])
        return self.get_round(round_id)

    def get_round(self, round_id: int) -> dict:
        rows = list(self._db().query("SELECT * FROM rounds WHERE id = ?", [round_id]))
        if not rows:
            raise KeyError(f"no round {round_id!r}")
        return self._round_row(rows[0])

    def rounds(self) -> list[dict]:
        return [self._round_row(r) for r in self._db().query("SELECT * FROM rounds ORDER BY id")]

    def next_round_id(self) -> int:
        """The id `create_round` gives next (AUTOINCREMENT: ids are never reused)."""
        rows = list(self._db().query("SELECT seq FROM sqlite_sequence WHERE name = 'rounds'"))
        return (int(rows[0]["seq"]) if rows else 0) + 1

    # -- retention and versioned exports

    def prune_unrated(self, limit: int, keep=(), min_age_s: float = 0.0) -> dict:
        """Delete the oldest samples nobody rated beyond `limit` of them (rows, then image files).

        Never deletes a sample in any comparison (undone ones included), one in `keep` (the pair queue and
        pairs on screen), or one younger than `min_age_s`. Prompts left without samples go too.
        Returns {"deleted": n, "unrated": unrated samples left}.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        keep = set(keep)
        cutoff = (datetime.now(timezone.utc) - timedelta(seconds=float(min_age_s))).isoformat(timespec="microseconds")
        unrated_sql = ("FROM samples s WHERE NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.sample_a = s.id)"
                       " AND NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.sample_b = s.id)")
        with self._write() as db:
            total = db.execute(f"SELECT count(*) {unrated_sql}").fetchone()[0]
            gone: list[str] = []
            if total > limit:
                for (sid, created) in db.execute(f"SELECT s.id, s.created_at {unrated_sql} ORDER BY s.created_at, s.id"):
                    if len(gone) >= total - limit or created > cutoff:
                        break
                    if sid not in keep:
                        gone.append(sid)
                for i in range(0, len(gone), 500):
                    chunk = gone[i:i + 500]
                    db.execute(f"DELETE FROM samples WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                db.execute("DELETE FROM prompts WHERE NOT EXISTS (SELECT 1 FROM samples s WHERE s.prompt_id = prompts.id)"
                           " AND NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.prompt_id = prompts.id)")
        for sid in gone:  # after the commit: a crash here leaves files without rows, never rows without files
            for f in (self.images_dir / sid[:2]).glob(f"{sid}.*"):  # whatever format it was stored in
                f.unlink(missing_ok=True)
        return {"deleted": len(gone), "unrated": total - len(gone)}

    def delete_orphan_images(self, min_age_s: float = 3600.0) -> int:
        """Delete image files with no sample row, older than `min_age_s` (a write may be between file and row)."""
        cutoff = datetime.now(timezone.utc).timestamp() - min_age_s
        n = 0
        with self._write() as db:
            for f in imgs.image_files(self.images_dir):
                if f.stat().st_mtime < cutoff and db.execute("SELECT 1 FROM samples WHERE id = ?",
                                                            [f.stem]).fetchone() is None:
                    f.unlink(missing_ok=True)
                    n += 1
        return n

    def data_version(self, include_skips: bool = False) -> str:
        """A hash of everything a preference export holds (live comparisons, their choices and ids): equal
        versions give equal exports, any vote, undo or import gives a new one."""
        h = hashlib.sha256(b"skips" if include_skips else b"labels")
        for row in self._db().execute("SELECT id, client_id, sample_a, sample_b, choice, rater FROM comparisons"
                                      " WHERE undone_at IS NULL ORDER BY id"):
            h.update(json.dumps(row).encode())
        return h.hexdigest()[:16]

    def export_versioned(self, export_dir: str | Path, include_skips: bool = False, keep_last: int = 2) -> Path:
        """The Parquet export of the current data, written once per data version (`preferences-<version>.parquet`).

        An existing file for this version is returned as is. A new one is written under a unique temporary
        name and renamed, so concurrent exports never collide; older versions beyond `keep_last` are removed.
        """
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
        export_dir = Path(export_dir)
        conn = self._db().conn
        own = not conn.in_transaction
        if own:  # one read snapshot (WAL) for the version and the rows it names: a vote meanwhile waits for the next
            conn.execute("BEGIN")
        try:
            name = f"preferences-{self.data_version(include_skips)}{'-skips' if include_skips else ''}.parquet"
            path = export_dir / name
            if not path.exists():
                export_dir.mkdir(parents=True, exist_ok=True)
                part = export_dir / f".{name}.{uuid.uuid4().hex}.part"
                try:
                    self.export_parquet(part, include_skips=include_skips)
                    os.replace(part, path)
                finally:
                    for leftover in (part, part.with_name(part.name + ".tmp")):
                        leftover.unlink(missing_ok=True)
        finally:
            if own and conn.in_transaction:
                conn.execute("COMMIT")
        olds = []
        for p in export_dir.glob("preferences-*.parquet"):
            try:
                if p != path:
                    olds.append((p.stat().st_mtime, p))
            except FileNotFoundError:  # removed by a concurrent export
                pass
        for _, old in sorted(olds, reverse=True)[max(keep_last - 1, 0):]:
            old.unlink(missing_ok=True)
        return path

    # -- bulk import (parquet.py reads and validates files; this writes)

    def samples_by_uid(self, uids) -> dict[str, str]:
        """{uid: sample id} for each uid that is a stored sample's id or the source uid it was imported under."""
        out: dict[str, str] = {}
        uids = list(dict.fromkeys(uids))
        for i in range(0, len(uids), 400):
            chunk = uids[i:i + 400]
            marks = ",".join("?" * len(chunk))
            for sid, uid in self._db().execute(f"SELECT id, source_uid FROM samples WHERE source_uid IN ({marks})"
                                               f" ORDER BY created_at, id", chunk):
                out.setdefault(uid, sid)
            for (sid,) in self._db().execute(f"SELECT id FROM samples WHERE id IN ({marks})", chunk):
                out[sid] = sid
        return out

    def import_records(self, samples: list[dict], comparisons: list[dict], strict: bool = True) -> dict:
        """Add imported samples and comparisons in one transaction: image files first, then rows.

        samples: {"data": PNG or JPEG bytes (stored as given; the id is their sha256), "prompt", "size": (w, h),
                  "seed", "steps", "guidance" (or None), "generator", "created_at" (ISO 8601 or None),
                  "source_uid" (or None)}
        comparisons: {"a", "b" (sample ids), "choice", "rater", "client_id", "created_at"}
        Each record may carry "ref" (e.g. "row 12"), which names it in errors.
        strict: the first bad record raises ValueError and nothing changes. Otherwise a bad record is left
        out (its rows and new files undone) and listed in "errors" as {"kind", "index", "ref", "error"}.
        Returns counts: samples_added, samples_existing, comparisons_added, comparisons_existing, and errors.
        """
        report = {"samples_added": 0, "samples_existing": 0, "comparisons_added": 0, "comparisons_existing": 0,
                  "errors": []}
        refused: dict[str, str] = {}  # sample id -> why, for the comparisons that name it
        written: list[Path] = []

        def attempt(db: Database, kind: str, index: int, record: dict, fn) -> None:
            db.execute("SAVEPOINT record")
            try:
                fn(db, record)
                db.execute("RELEASE record")
            except ValueError as e:
                db.execute("ROLLBACK TO record")
                db.execute("RELEASE record")
                ref = record.get("ref") or f"{kind} {index}"
                if strict:
                    raise ValueError(f"{ref}: {e}") from None
                report["errors"].append({"kind": kind, "index": index, "ref": ref, "error": str(e)})

        def add_sample(db: Database, s: dict) -> None:
            data, sid = bytes(s["data"]), imgs.sha256(bytes(s["data"]))
            try:
                fmt = imgs.image_format(data)
                prompt = check_prompt(s["prompt"], "caption")
                generator = check_name(s["generator"], "generator")
                if s.get("seed") is not None:
                    check_seed(s["seed"])
                uid = s.get("source_uid")
                if uid is not None:
                    check_name(uid, "source uid", 128)
                row = db.execute("SELECT p.text FROM samples s JOIN prompts p ON p.id = s.prompt_id WHERE s.id = ?",
                                 [sid]).fetchone()
                if row is not None and row[0] != prompt:
                    raise ValueError(f"image {sid[:12]}… is already stored under another prompt ({row[0][:80]!r})")
            except ValueError as e:
                refused[sid] = str(e)
                raise
            added = self._insert_sample(db, sid, prompt, tuple(s["size"]), s.get("seed"), s.get("steps"),
                                        s.get("guidance"), generator, s.get("created_at"))
            if added:  # the row is invisible until the commit; a failed commit removes the file again
                db.execute("UPDATE samples SET source_uid = ? WHERE id = ?", [uid, sid])
                path = imgs.image_path(self.images_dir, sid, fmt)
                if imgs.write_atomic(path, data):
                    written.append(path)
            report["samples_added" if added else "samples_existing"] += 1

        def add_comparison(db: Database, c: dict) -> None:
            for sid in (c["a"], c["b"]):
                if sid in refused:
                    raise ValueError(f"its image {sid[:12]}… was refused: {refused[sid]}")
            if c["choice"] not in CHOICES:
                raise ValueError(f"choice must be one of {', '.join(CHOICES)}; got {c['choice']!r}")
            rater = check_name(c["rater"], "rater", identity.MAX_STORED_RATER)
            row = self._insert_comparison(db, c["a"], c["b"], c["choice"], rater,
                                          check_name(c["client_id"], "client_id", MAX_CLIENT_ID), c.get("created_at"))
            report["comparisons_added" if row["created"] else "comparisons_existing"] += 1

        try:
            with self._write() as db:
                for i, s in enumerate(samples):
                    attempt(db, "sample", i, s, add_sample)
                for j, c in enumerate(comparisons):
                    attempt(db, "comparison", j, c, add_comparison)
        except BaseException:
            for p in written:  # content-addressed files this call wrote: no row names them now
                p.unlink(missing_ok=True)
            raise
        return report

    # -- exchange and durability (see parquet.py and backup.py)

    def export_parquet(self, path: str | Path, include_skips: bool = False) -> Path:
        from .parquet import export_parquet

        return export_parquet(self, path, include_skips=include_skips)

    def import_parquet(self, path: str | Path, strict: bool = False) -> dict:
        from .parquet import import_parquet

        return import_parquet(self, path, strict=strict)

    def snapshot(self, backup_dir: str | Path, repo_id: str | None = None, token: str | None = None,
                 keep: int | None = None) -> Path:
        from .backup import snapshot

        return snapshot(self, backup_dir, repo_id=repo_id, token=token, keep=keep)

    @staticmethod
    def restore_latest(backup_dir: str | Path, data_dir: str | Path, repo_id: str | None = None,
                       token: str | None = None) -> Path | None:
        from .backup import restore_latest

        return restore_latest(backup_dir, data_dir, repo_id=repo_id, token=token)
