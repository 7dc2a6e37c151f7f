"""A bounded fault script: replays the issue-13 attacks against the store, settings, reward-model import and
trainer layers and (`--app`) through the launched app, and kills writers with SIGKILL, then says what was tried,
what got through and what was lost.

    python bench/faults.py            # about a minute on a 2-core CPU; the last line is JSON
    python bench/faults.py --quick    # fewer kills, smaller zip bomb
    python bench/faults.py --app      # and the same attacks through the launched app (about 5 minutes in all)
    python bench/faults.py --app --results   # and write the "Faults and hostile input" section of RESULTS.md

Targets: hostile inputs accepted 0, votes lost 0, votes doubled 0, disk bounded under endless generation and
per 1,000 /next_pair calls.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from feedback import FeedbackStore, identity  # noqa: E402
from studio.settings import EDITABLE, StudioSettings  # noqa: E402

TALLY: dict[str, dict] = {}


def record(stage: str, tried: int, accepted: int, **extra) -> None:
    TALLY[stage] = {"tried": tried, "accepted": accepted, **extra}
    notes = " ".join(f"{k}={v}" for k, v in extra.items())
    print(f"{stage:<28} tried {tried:>4}  accepted {accepted:>3}  {notes}", flush=True)


def noise_image(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def fresh_store(root: Path, name: str, n: int = 8) -> tuple[FeedbackStore, list[str]]:
    store = FeedbackStore(root / name)
    ids = [store.add_sample(noise_image(i), "a red circle", seed=i, steps=4, guidance=8.0) for i in range(n)]
    return store, ids


def live(store, rater: str) -> list[tuple]:
    return store._db().execute("SELECT id, choice FROM comparisons WHERE rater = ? AND undone_at IS NULL ORDER BY id",
                               [rater]).fetchall()


# ---------------------------------------------------------------- identity

HOSTILE_NAMES = {
    "signed-in prefix": "hf:alice", "signed-in prefix, capitals": "HF:alice", "full-width colon": "hf\uff1aalice",
    "Cyrillic a": "\u0430lice", "Cyrillic i": "al\u0456ce", "all Cyrillic": "\u0430l\u0456\u0441\u0435",
    "Greek omicron": "b\u03bfb", "full width": "\uff41\uff4c\uff49\uff43\uff45", "capitals": "ALICE",
    "capital I for l": "AIice", "digit 1 for l": "a1ice", "accent": "alic\u00e9", "combining accent": "alice\u0301",
    "zero-width space": "ali\u200bce", "zero-width joiner": "al\u200dice", "soft hyphen": "al\u00adice",
    "over-long": "x" * 65, "very long": "y" * 100_000, "NUL": "eve\x00", "newline": "eve\nINFO forged",
    "escape sequence": "eve\x1b[31m", "DEL": "eve\x7f", "private use": "eve\ue000", "line separator": "eve\u2028",
    "empty": "", "spaces": "   ", "only zero-width": "\u200b\u200b", "not text": 12345,
}


def stage_names(root: Path) -> None:
    store, ids = fresh_store(root, "names")
    token = store.vote(identity.typed("alice"), ids[0], ids[1], "a", "seed-1")["rater_token"]
    store.vote(identity.typed("bob"), ids[0], ids[1], "b", "seed-2")
    accepted = []
    for i, (what, name) in enumerate(HOSTILE_NAMES.items()):
        try:
            store.vote(identity.typed(name), ids[2], ids[3], "a", f"name-{i}")
            accepted.append(what)
        except (ValueError, PermissionError):
            pass
    bad_users = ["", "al ice", "-x", "a" * 200, "al\u0456ce", "x/../../etc", "alice\n"]
    for i, user in enumerate(bad_users):
        try:
            store.vote(identity.signed_in(user), ids[2], ids[3], "a", f"user-{i}")
            accepted.append(f"username {user!r}")
        except ValueError:
            pass
    record("names", len(HOSTILE_NAMES) + len(bad_users), len(accepted), through=accepted or "-")
    assert token
    store.close()


def stage_stolen_names(root: Path) -> None:
    store, ids = fresh_store(root, "stolen")
    alice = store.vote(identity.typed("alice"), ids[0], ids[1], "a", "a-1")["rater_token"]
    store.vote(identity.typed("alice", alice), ids[2], ids[3], "b", "a-2")
    bob = store.vote(identity.typed("bob"), ids[4], ids[5], "a", "b-1")["rater_token"]
    before = live(store, "alice")
    tries, accepted = 0, 0
    for token in (None, "", "x" * 32, bob, alice[:-1] + ("A" if alice[-1] != "A" else "B"), alice + "x"):
        for act in ("vote", "undo") + ("undo",) * 12:  # the 13 undos
            tries += 1
            try:
                if act == "vote":
                    store.vote(identity.typed("alice", token), ids[6], ids[7], "a", f"steal-{tries}")
                else:
                    store.undo_vote(identity.typed("alice", token))
                accepted += 1
            except (ValueError, PermissionError):
                pass
    # bob, with his own valid token, aims at alice's vote by id
    first = before[0][0]
    tries += 1
    accepted += store.undo_vote(identity.typed("bob", bob), comparison_id=first) is not None
    changed = live(store, "alice") != before
    # the same pair again and again under fresh client ids
    rows0 = store.counts()["comparisons"]
    for k in range(20):
        tries += 1
        again = store.vote(identity.typed("alice", alice), ids[1], ids[0], "b", f"repeat-{k}")
        accepted += again["created"]
    record("stolen names, repeats", tries, accepted + changed, alice_votes_changed=changed,
           rows_added_by_repeats=store.counts()["comparisons"] - rows0)
    store.close()


# ---------------------------------------------------------------- settings, seeds, zip

def stage_settings(root: Path) -> None:
    hostile = [float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 2**63, -1, True, "nan", "1e400", [], {}]
    s = StudioSettings(data_dir=root / "settings")
    before = s.editable()
    tries, accepted = 0, []
    for name in EDITABLE:
        for value in hostile:
            tries += 1
            try:
                s.update(**{name: value})
                accepted.append(f"{name}={value!r}")
            except ValueError:
                pass
    s.save()
    doc = json.loads(s.settings_path.read_text())
    for name in EDITABLE:  # a tampered settings.json
        tries += 1
        s.settings_path.write_text(json.dumps({**doc, "values": {**doc["values"], name: 1e300}}))
        try:
            StudioSettings(data_dir=s.data_dir).load_saved()
            accepted.append(f"file {name}=1e300")
        except ValueError:
            pass
    record("settings", tries, len(accepted) + (s.editable() != before), through=accepted or "-")


def stage_seeds(root: Path) -> None:
    store, _ = fresh_store(root, "seeds", n=0)
    seeds = [2**63, 2**63 + 1, 2**64, 10**30, -1, -(2**63) - 1, 1.5, float("nan"), "7", True]
    accepted = 0
    for i, seed in enumerate(seeds):
        try:
            store.add_sample(noise_image(1000 + i), "a blue star", seed=seed, steps=4, guidance=8.0)
            accepted += 1
        except ValueError:
            pass
    files = len(list(store.images_dir.rglob("*.png"))) if store.images_dir.exists() else 0
    record("seeds >= 2**63 and others", len(seeds), accepted, files_left=files, rows=store.counts()["samples"])
    TALLY["seeds >= 2**63 and others"]["accepted"] += files
    store.close()


def stage_zip(root: Path, bomb_mib: int) -> None:
    export = importlib.import_module("reward_model.export")
    import reward_model

    path = root / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("config.json", "{}")
        with z.open("model.safetensors", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(bomb_mib):
                f.write(chunk)
    many = root / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(export.MAX_MEMBERS + 1000):
            z.writestr(f"f{i}", b"")
    accepted, peaks = 0, []
    for p in (path, many):
        tracemalloc.start()
        try:
            reward_model.load(p)
            accepted += 1
        except ValueError:
            pass
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    record("zip bomb, many entries", 2, accepted, bomb=f"{bomb_mib} MiB in {path.stat().st_size >> 10} KiB",
           peak_alloc_mib=round(max(peaks) / 2**20, 1))


# ---------------------------------------------------------------- kill -9 mid-vote

def child_voter(data_dir: str) -> None:
    """Vote forever (typed name with its token, and signed in), printing each acknowledged client id."""
    store = FeedbackStore(data_dir)
    ids = [s["id"] for s in store.samples()]
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    tok_path = Path(data_dir) / "token.txt"
    token = tok_path.read_text() if tok_path.exists() else None
    n = int(sys.argv[sys.argv.index("--start") + 1])
    while True:  # every vote a new (rater, pair): a repeat would be recorded once, by design
        rater = identity.typed("carol", token) if n % 2 else identity.signed_in(f"user{n}")
        row = store.vote(rater, *pairs[(n // 2) % len(pairs)], random.choice("ab"), f"kill-{n}")
        assert row["created"], row
        if row.get("rater_token") and token is None:
            token = row["rater_token"]
            tok_path.write_text(token)
        print(f"ack kill-{n}", flush=True)
        n += 1


def stage_kill_votes(root: Path, kills: int) -> dict:
    store, _ = fresh_store(root, "kill-votes", n=48)  # 1128 pairs: carol never runs out
    store.close()
    data_dir = root / "kill-votes"
    rng = random.Random(0)
    acked: list[str] = []
    start = 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, __file__, "--child-voter", str(data_dir), "--start", str(start)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        stop_after = rng.randint(5, 60)
        got = 0
        for line in proc.stdout:
            if line.startswith("ack "):
                acked.append(line.split()[1])
                got += 1
                if got >= stop_after:
                    proc.send_signal(signal.SIGKILL)  # mid-loop: it is writing the next vote
                    break
        proc.wait()
        acked += [line.split()[1] for line in proc.stdout if line.startswith("ack ")]
        start = int(acked[-1].split("-")[1]) + 2 if acked else start + 1000  # skip the one in flight
    with FeedbackStore(data_dir) as s:
        rows = s._db().execute("SELECT client_id, rater, sample_a, sample_b FROM comparisons").fetchall()
        ok = s._db().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = [r[0] for r in rows]
    lost = len(set(acked) - set(stored))
    doubled = (len(stored) - len(set(stored))) + (len(rows) - len({(r[1],) + tuple(sorted(r[2:])) for r in rows}))
    TALLY["kill -9 mid-vote"] = {"kills": kills, "acked": len(acked), "stored": len(stored), "lost": lost,
                                 "doubled": doubled, "integrity_ok": ok}
    print(f"{'kill -9 mid-vote':<28} kills {kills}  acknowledged {len(acked)}  stored {len(stored)}  "
          f"lost {lost}  doubled {doubled}  integrity {'ok' if ok else 'BROKEN'}", flush=True)
    return TALLY["kill -9 mid-vote"]


# ---------------------------------------------------------------- kill -9 mid-round

def child_round(out_dir: str, epochs: int) -> None:
    import torch

    from rlcm.arch import lcm_pipeline
    from rlcm.trainer import RLCMConfig, RLCMTrainer, resume_config

    torch.set_num_threads(1)
    cfg = resume_config(RLCMConfig(model="tiny", epochs=epochs, prompts_per_epoch=1, images_per_prompt=2,
                                   sample_batch_size=2, train_batch_size=2, num_steps=2, eval_every=0, lr=1e-2,
                                   lora_rank=2, lora_alpha=2, output_dir=out_dir, train_prompts=2,
                                   checkpoint_every=1, device="cpu"))
    print(f"config epochs={cfg.epochs}", flush=True)
    pipe = lcm_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    bright = lambda images, prompts: np.array([np.asarray(im, np.float32).mean() for im in images])  # noqa: E731
    tr = RLCMTrainer(cfg, pipe=pipe, reward_fn=bright,
                     callbacks=[lambda e: print(f"event {e['type']} {e.get('epoch')}", flush=True)])
    tr.train()


def stage_kill_round(root: Path) -> dict:
    out = root / "round"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child-round", str(out)]
    proc = subprocess.Popen(cmd + ["--epochs", "5"], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    for line in proc.stdout:
        if line.startswith("event epoch 3"):  # logged; its checkpoint is being written right now
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    (out / "checkpoint.old").mkdir(exist_ok=True)  # and the leftover of an interrupted swap, as in the issue
    (out / "checkpoint.old" / "trainer_state.pt").write_bytes(b"stale")
    # restarted with lost settings (12 -> 2 epochs): the run must still end at its own 5
    res = subprocess.run(cmd + ["--epochs", "2"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    epochs = [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()] if (
        out / "log.jsonl").exists() else []
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint."))
    r = {"resume_rc": res.returncode, "logged_epochs": epochs, "leftovers": leftovers,
         "kept_config": "config epochs=5" in res.stdout}
    r["held"] = res.returncode == 0 and epochs == [1, 2, 3, 4, 5] and not leftovers and r["kept_config"]
    TALLY["kill -9 mid-round"] = r
    print(f"{'kill -9 mid-round':<28} resume rc {res.returncode}  kept epochs=5: {r['kept_config']}  "
          f"log epochs {epochs}  leftovers {leftovers or '-'}  {'held' if r['held'] else 'FAILED'}", flush=True)
    if res.returncode:
        print(res.stderr[-2000:])
    return r


# ---------------------------------------------------------------- disk under endless generation

def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stage_disk(root: Path, pairs: int, limit: int) -> None:
    store, _ = fresh_store(root, "disk", n=0)
    sizes = []
    rng = random.Random(1)
    for i in range(pairs):
        a = store.add_sample(noise_image(10_000 + 2 * i), "a red circle", seed=2 * i, steps=4, guidance=8.0)
        b = store.add_sample(noise_image(10_001 + 2 * i), "a red circle", seed=2 * i + 1, steps=4, guidance=8.0)
        if rng.random() < 0.05:  # a few get rated and are kept for good
            store.vote(identity.signed_in("rater"), a, b, "a", f"d-{i}")
        store.prune_unrated(limit, keep={a, b})
        if i + 1 in (pairs // 2, pairs):
            store._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(dir_bytes(store.data_dir))
    rated = store.counts()["comparisons"]
    unrated = store.prune_unrated(limit)["unrated"]
    growth = (sizes[1] - sizes[0]) * 1000 / (pairs - pairs // 2)
    TALLY["disk"] = {"pairs": pairs, "limit": limit, "bytes_half": sizes[0], "bytes_end": sizes[1],
                     "growth_bytes_per_1000_pairs": round(growth), "rated_pairs": rated, "unrated_end": unrated,
                     "samples_end": store.counts()["samples"]}
    print(f"{'disk, generate + retain':<28} {pairs} pairs, keep {limit} unrated: {sizes[0] >> 10} KiB at half, "
          f"{sizes[1] >> 10} KiB at end ({growth / 1024:+.0f} KiB per 1000 pairs, all of it the {rated} rated pairs; "
          f"unrated samples {unrated})",
          flush=True)
    store.close()


# ---------------------------------------------------------------- the launched app (--app)

APP_PASSWORD = "faults-admin-pw"
NEXT_PAIR_PREFILL = 1000  # = the default keep_unrated: the data dir starts in its long-run state


class Tally:
    """Hostile requests through the app: each is refused (an error or nothing done) or counted as accepted."""

    def __init__(self):
        self.tried, self.through, self.unclear = 0, [], []
        self.kind, self.kinds = "", {}  # the attack being replayed, and per attack [tried, accepted]

    def count(self, n: int = 1, through: list | None = None) -> None:
        self.tried += n
        self.through += through or []
        k = self.kinds.setdefault(self.kind, [0, 0])
        k[0], k[1] = k[0] + n, k[1] + len(through or [])

    def expect_refused(self, what: str, call, done=lambda out: True) -> None:
        """`call()` must raise, or return something `done(out)` says did nothing. A refusal without the app's own
        message (a bug's exception, which Gradio hides) is noted as unclear."""
        try:
            out = call()
        except Exception as e:
            if "show_error" in str(e) or "verbose error" in str(e) or not str(e).strip():
                self.unclear.append(what)
            self.count()
            return
        self.count(through=[what] if done(out) else [])


def hidden_call(client, api_name: str, *args):
    """A handler hidden from the API page, called by its fn_index from /config (gradio_client refuses private
    ones itself; an attacker's client doesn't)."""
    fn_index = next(d["id"] for d in client.config["dependencies"] if d.get("api_name") == api_name)
    client.endpoints[fn_index].is_valid = True
    return client.predict(*args, fn_index=fn_index)


def raw_call(url: str, api_name: str, *args):
    """/gradio_api/call/<api_name> with JSON that may hold NaN and Infinity (gradio_client won't send them, a
    script can); returns the result, raises RuntimeError with the app's message when it refuses."""
    import httpx

    r = httpx.post(f"{url}gradio_api/call/{api_name}", content=json.dumps({"data": list(args)}),
                   headers={"content-type": "application/json"}, timeout=60)
    r.raise_for_status()
    stream = httpx.get(f"{url}gradio_api/call/{api_name}/{r.json()['event_id']}", timeout=60).text
    kind, _, data = stream.rsplit("event: ", 1)[-1].partition("\n")
    if kind.strip() != "complete":
        raise RuntimeError(data.strip())
    return json.loads(data.removeprefix("data:").strip())


def launch_app(data_dir: Path, **overrides):
    from app import build_app, launch_kwargs
    from studio.runtime import Studio

    models = ROOT / "data" / "models"
    settings = StudioSettings(model=str(models / "toy-lcm"), clip=str(models / "toy-clip"), data_dir=data_dir,
                              admin_password=APP_PASSWORD, snapshot_every_s=0, auto_round_every=0, **overrides)
    studio = Studio(settings)
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=8).launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(settings))
    return studio, demo


def app_state(studio) -> dict:
    """What a refused request must leave alone: live votes, claims, rounds, settings, files outside images/."""
    d = studio.settings.data_dir
    files = sorted((str(p.relative_to(d)), p.stat().st_size) for p in d.rglob("*") if p.is_file()
                   and "images" not in p.relative_to(d).parts and not p.name.startswith("feedback.db"))
    votes = studio.store._db().execute("SELECT id, rater, choice FROM comparisons WHERE undone_at IS NULL"
                                       " ORDER BY id").fetchall()
    claims = studio.store._db().execute("SELECT name FROM rater_tokens ORDER BY name").fetchall()
    return {"votes": votes, "claims": claims, "rounds": len(studio.store.rounds()),
            "settings": studio.settings.editable(), "files": files}


def settle(studio, timeout: float = 60.0) -> None:
    """Until the pair queue is full and idle (rows and image files agree and stop changing)."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        now = (studio.queue.q.full(), sum(1 for p in studio.store.images_dir.rglob("*") if p.is_file()),
               studio.store.counts()["samples"])
        if now[0] and now[1] == now[2] and now == last:
            return
        last = now
        time.sleep(0.25)


def app_attacks(studio, demo, client, tally: Tally, upload_mb: int) -> dict:
    """Stolen names, others' undos, admin endpoints without the password, hidden handlers by fn_index, hostile
    settings, oversize uploads, seeds >= 2**63, export spam; returns alice's and bob's votes lost."""
    import httpx
    from gradio_client import handle_file

    pairs = [client.predict(api_name="/next_pair") for _ in range(4)]
    def vote(who, p, choice, tok=None):
        return client.predict(who, p["a"], p["b"], choice, p["client_id"], tok, api_name="/vote")

    alice = vote("alice", pairs[0], "a")["rater_token"]
    vote("alice", pairs[1], "b", alice)
    bob = vote("bob", pairs[2], "a")["rater_token"]
    theirs = studio.store._db().execute("SELECT id FROM comparisons WHERE undone_at IS NULL").fetchall()
    before = app_state(studio)
    p = pairs[3]
    created = lambda out: bool(out.get("created")) or bool(out.get("undone"))  # noqa: E731
    # 1. names: look-alikes and hostile text, each a vote under that name without a token
    tally.kind = "look-alike and hostile names (/vote)"
    for i, (what, name) in enumerate(HOSTILE_NAMES.items()):
        tally.expect_refused(f"name {what}", lambda: client.predict(name, p["a"], p["b"], "a", f"n-{i}", None,
                                                                   api_name="/vote"), created)
    # 2. alice's name without her token: votes, and the 13 undos, per token
    tally.kind = "alice's name without her token (/vote, /undo_vote x13)"
    for t, tok in enumerate((None, "", "x" * 32, bob, alice[:-1] + ("A" if alice[-1] != "A" else "B"))):
        tally.expect_refused("alice's name, vote", lambda: vote("alice", p, "a", tok), created)
        for _ in range(13):
            tally.expect_refused("alice's name, undo", lambda: client.predict("alice", tok, api_name="/undo_vote"),
                                 created)
    # 3. the same pair again under fresh client ids, by its rightful rater
    tally.kind = "same pair again, new client ids"
    for k in range(10):
        a, b = (pairs[0]["a"], pairs[0]["b"]) if k % 2 else (pairs[0]["b"], pairs[0]["a"])
        tally.expect_refused("repeat pair", lambda: client.predict("alice", a, b, "b", f"r-{k}", alice,
                                                                  api_name="/vote"), created)
    # 4. admin endpoints without the password
    tally.kind = "admin endpoints without the password"
    admin_calls = {"/export_data": (), "/generate": ("a stranger's prompt", 1), "/import_preferences": ("/etc/hosts",),
                   "/save_settings": (3, 5.0, 2, 0, 0.1, 0.0, 0.5, 0.2), "/activate": ("base",),
                   "/start_round": (True,), "/cancel_round": (), "/reject_candidate": (), "/fit_reward_model": ()}
    for endpoint, args in admin_calls.items():
        for pw in ("", "wrong", APP_PASSWORD.upper(), APP_PASSWORD + " "):
            tally.expect_refused(f"{endpoint} without the password",
                                 lambda: client.predict(pw, *args, api_name=endpoint))
    # 5. hidden handlers by fn_index: the Rate tab's buttons as alice without her token, the admin ones without
    # the password (one session with a pair on screen)
    tally.kind = "hidden handlers by fn_index"
    hidden_call(client, "first_pair", "", {})
    for api_name in ("vote_a", "vote_b", "vote_tie", "vote_skip", "undo"):
        for tokens in ({}, {"alice": ["alice", "x" * 32]}, {"": ["alice", bob]}):
            name = "" if "" in tokens else "alice"
            tally.expect_refused(f"hidden {api_name}", lambda: hidden_call(client, api_name, name, tokens))
    # the browser's token store as a script fills it (the name box makes text of any name: "12345" is a name)
    for name, tokens in (("", {"": 5}), ("", {"": ["alice", 12345]}), ("", {"": [None, bob]}), ("", "not a dict"),
                         ("alice", {"alice": "al"}), ("alice", {"alice": ["alice", ["x"] * 40]})):
        tally.expect_refused("hidden vote_a, malformed", lambda: hidden_call(client, "vote_a", name, tokens))
    zpath = studio.settings.data_dir.parent / "rm.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("config.json", "{}")
    for api_name, args in (("export_data", ("",)), ("raters", ("",)), ("upload", ("", handle_file(str(zpath)))),
                           ("push_reward_model", ("", "x/y")), ("push_lora", ("", "x/y")),
                           ("push_dataset", ("", "x/y"))):
        tally.expect_refused(f"hidden {api_name}", lambda: hidden_call(client, api_name, *args))
    state_ok = app_state(studio) == before
    # 6. hostile settings, as the admin (validation, not the password, must stop them)
    tally.kind = "NaN, inf, huge, negative settings (raw JSON)"
    valid = [3, 5.0, 2, 0, 0.1, 0.0, 0.5, 0.2]
    for i in range(len(valid)):
        for bad in (float("nan"), float("inf"), -float("inf"), 1e300, -1e300, -1, 2**63):
            values = valid[:i] + [bad] + valid[i + 1:]
            tally.expect_refused(f"settings[{i}]={bad}", lambda: raw_call(demo.local_url, "save_settings",
                                                                          APP_PASSWORD, *values))
    state_ok &= app_state(studio) == before
    # 7. uploads over the cap, straight to Gradio's upload route (gradio_client would check the size first)
    tally.kind = f"uploads of {upload_mb + 1} MB (cap {upload_mb} MB)"
    cache = Path(demo.GRADIO_CACHE)
    listing = lambda: sorted((str(f), f.stat().st_size) for f in cache.rglob("*") if f.is_file())  # noqa: E731
    cached = listing()
    blob = os.urandom((upload_mb + 1) << 20)
    for _ in range(2):
        tally.expect_refused("upload over the cap", lambda: httpx.post(
            demo.local_url + "gradio_api/upload", files={"files": ("big.parquet", blob)}, timeout=120
        ).raise_for_status())
    tally.count(0, ["upload kept"] if listing() != cached else [])  # refused, yet a file left behind
    # 8. seeds >= 2**63 and other non-seeds, as the admin
    tally.kind = "seeds >= 2**63 and non-seeds (/generate)"
    settle(studio)
    files = sum(1 for f in studio.store.images_dir.rglob("*") if f.is_file())
    for seed in (2**63, 2**63 + 1, 2**64, 10**30, -1, 1.5, "7", True):
        tally.expect_refused(f"seed {seed}", lambda: client.predict(APP_PASSWORD, "a far seed", seed,
                                                                   api_name="/generate"))
    settle(studio)
    left = sum(1 for f in studio.store.images_dir.rglob("*") if f.is_file()) - files
    rows = [s for s in studio.store.samples() if s["prompt"] == "a far seed"]
    tally.count(through=[f"seeds left {left} files, {len(rows)} rows"] if left or rows else [])
    # 9. export spam by the admin with no new data: 6 at once, then 14 in a row
    tally.kind = "export spam, no new data"
    jobs = [client.submit(APP_PASSWORD, api_name="/export_data") for _ in range(6)]
    for j in jobs:
        j.result()
    for _ in range(14):
        client.predict(APP_PASSWORD, api_name="/export_data")
    exported = [f.name for f in (studio.settings.data_dir / "exports").iterdir()]
    tally.count(20, [f"export spam left {len(exported)} files"] if len(exported) != 1 else [])
    state_ok &= {k: v for k, v in app_state(studio).items() if k != "files"} == \
        {k: v for k, v in before.items() if k != "files"}
    tally.kind = "nothing changed: votes, claims, rounds, settings"
    tally.count(through=[] if state_ok else ["state changed"])
    live = {r[0] for r in studio.store._db().execute("SELECT id FROM comparisons WHERE undone_at IS NULL")}
    return {"votes_lost": len({r[0] for r in theirs} - live), "exports": len(exported), "upload_mb": upload_mb + 1,
            "seed_files_left": left}


def app_space_start(root: Path, tally: Tally) -> dict:
    """A Space-like launch (no reachable OpenID provider): the page loads; visitors not signed in can't vote."""
    import httpx
    from gradio_client import Client

    env = dict(SYSTEM="spaces", SPACE_ID="someone/rlcm-studio", OAUTH_CLIENT_ID="client-id",
               OAUTH_CLIENT_SECRET="client-secret", OAUTH_SCOPES="openid profile",
               OPENID_PROVIDER_URL="http://127.0.0.1:9")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        studio, demo = launch_app(root / "space", queue_size=1)
        page = httpx.get(demo.local_url, timeout=30).status_code
        config = httpx.get(demo.local_url + "config", timeout=30).json()
        login = any(c["type"] == "button" and c["props"].get("value") == "Sign in with Hugging Face"
                    for c in config["components"])
        client = Client(demo.local_url, verbose=False, download_files=False)
        p = client.predict(api_name="/next_pair")
        tally.kind = "Space: votes and undos not signed in"
        for i, name in enumerate(("alice", "", "hf:alice", "anon-0123456789")):
            tally.expect_refused("not signed in, vote", lambda: client.predict(
                name, p["a"], p["b"], "a", f"s-{i}", None, api_name="/vote"))
            tally.expect_refused("not signed in, undo", lambda: client.predict(name, None, api_name="/undo_vote"))
        hidden_call(client, "first_pair", "", {})
        tally.expect_refused("not signed in, page vote", lambda: hidden_call(client, "vote_a", "", {}))
        votes = studio.store.counts()["comparisons"]
        studio.close()
        demo.close()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {"page": page, "login_button": login, "votes_written": votes}


def app_disk(studio, demo, client, calls: int, page_calls: int) -> dict:
    """Bytes in data_dir per 1000 /next_pair calls from the long-run state (keep_unrated unrated samples already
    there), and bytes Gradio's cache takes per pair the page shows (swept after studio.ui.app.CACHE_SWEEP)."""
    s = studio.settings
    images, _ = studio.generator.generate(studio.prompts[:16], list(range(16)))
    for i in range(NEXT_PAIR_PREFILL - studio.store.prune_unrated(10**9)["unrated"]):
        im = images[i % 16].copy()  # a real image, made distinct (sample ids hash the pixels) by one pixel
        im.putpixel((0, 0), (i % 256, i // 256 % 256, 7))
        studio.store.add_sample(im, studio.prompts[i % 16], seed=10_000 + i, steps=s.steps, guidance=s.guidance,
                                generator="base")

    def measure() -> tuple[int, int]:
        settle(studio)
        studio.store._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return dir_bytes(s.data_dir), studio.store.prune_unrated(10**9)["unrated"]

    b0, u0 = measure()
    t0 = time.time()
    for _ in range(calls):
        client.predict(api_name="/next_pair")
    rate = calls / (time.time() - t0)
    b1, u1 = measure()
    cache = Path(demo.GRADIO_CACHE)
    c0 = dir_bytes(cache)
    for _ in range(page_calls):  # the Rate tab's own first pair: two images copied into Gradio's cache
        hidden_call(client, "first_pair", "", {})
    c1 = dir_bytes(cache)
    return {"calls": calls, "keep_unrated": s.keep_unrated, "bytes_before": b0, "bytes_after": b1,
            "unrated_before": u0, "unrated_after": u1, "calls_per_s": round(rate, 1),
            "growth_per_1000": round((b1 - b0) * 1000 / calls), "page_calls": page_calls,
            "cache_bytes_per_page_pair": round((c1 - c0) / max(page_calls, 1))}


def stage_app(root: Path, next_pair_calls: int) -> dict:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio-cache")  # Gradio's uploads and cache, this run's alone
    import logging

    from gradio_client import Client

    logging.getLogger("rlcm.studio").setLevel(logging.ERROR)  # hundreds of refusals: their one-line logs off
    tally = Tally()
    space = app_space_start(root, tally)
    studio, demo = launch_app(root / "app", steps=2)  # defaults otherwise: keep_unrated 1000, uploads 100 MB
    try:
        client = Client(demo.local_url, verbose=False, download_files=False)
        attacks = app_attacks(studio, demo, client, tally, studio.settings.max_upload_mb)
        disk = app_disk(studio, demo, client, next_pair_calls, 20)
    finally:
        studio.close()
        demo.close()
    r = {"tried": tally.tried, "accepted": len(tally.through), "through": tally.through or "-",
         "unclear_refusals": tally.unclear or "-", **attacks,
         "space": space, "disk": disk}
    TALLY["app: hostile requests"] = {"tried": tally.tried, "accepted": len(tally.through),
                                      "through": tally.through or "-", "unclear_refusals": len(tally.unclear),
                                      "kinds": tally.kinds}
    for kind, (n, ok) in tally.kinds.items():
        print(f"  app: {kind:<56} tried {n:>4}  accepted {ok:>3}", flush=True)
    TALLY["app: disk"] = disk
    print(f"{'app: Space start':<28} page {space['page']}, login button {space['login_button']}, "
          f"votes written while not signed in {space['votes_written']}", flush=True)
    print(f"{'app: hostile requests':<28} tried {tally.tried:>4}  accepted {len(tally.through):>3}  "
          f"votes lost {attacks['votes_lost']}  export files {attacks['exports']}  "
          f"{attacks['upload_mb']} MB uploads kept: {'yes' if 'upload kept' in tally.through else 'no'}  "
          f"through={tally.through or '-'}  refused without a clear message: {tally.unclear or '-'}", flush=True)
    print(f"{'app: disk per /next_pair':<28} {disk['calls']} calls from {disk['unrated_before']} unrated "
          f"(keep {disk['keep_unrated']}): {disk['bytes_before'] >> 10} KiB -> {disk['bytes_after'] >> 10} KiB, "
          f"{disk['growth_per_1000'] / 1024:+.0f} KiB per 1000 calls, unrated after {disk['unrated_after']}; "
          f"{disk['calls_per_s']} calls/s; page pairs add {disk['cache_bytes_per_page_pair'] >> 10} KiB each to "
          f"Gradio's cache until its sweep", flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--app", action="store_true", help="also replay the attacks through the launched app")
    p.add_argument("--only-app", action="store_true", help="only the launched app's part")
    p.add_argument("--next-pair-calls", type=int, default=None, help="/next_pair calls measured for disk growth")
    p.add_argument("--results", action="store_true", help="write the figures into bench/RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = p.parse_args()
    t0 = time.time()
    root = Path(tempfile.mkdtemp(prefix="faults-"))
    votes = round_ = app = None
    try:
        if not args.only_app:
            stage_names(root)
            stage_stolen_names(root)
            stage_settings(root)
            stage_seeds(root)
            stage_zip(root, 256 if args.quick else 1024)
            votes = stage_kill_votes(root, 3 if args.quick else 8)
            round_ = stage_kill_round(root)
            stage_disk(root, 200 if args.quick else 1000, 100)
        if args.app or args.only_app:
            app = stage_app(root, args.next_pair_calls or (100 if args.quick else 500))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    hostile = {k: v for k, v in TALLY.items() if "tried" in v}
    tried, accepted = sum(v["tried"] for v in hostile.values()), sum(v["accepted"] for v in hostile.values())
    lost = (votes["lost"] if votes else 0) + (app["votes_lost"] if app else 0)
    doubled = votes["doubled"] if votes else 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {"hostile_tried": tried, "hostile_accepted": accepted, "votes_acked": votes and votes["acked"],
               "votes_lost": lost, "votes_doubled": doubled, "round_kill_held": round_ and round_["held"],
               "disk_growth_bytes_per_1000_pairs": TALLY.get("disk", {}).get("growth_bytes_per_1000_pairs"),
               "disk_growth_per_1000_next_pair_bytes": app and app["disk"]["growth_per_1000"],
               "max_rss_mib": round(rss), "seconds": round(time.time() - t0, 1), "stages": TALLY}
    print(f"hostile inputs tried {tried}, accepted {accepted} (target 0); votes lost {lost}, doubled {doubled} "
          f"(target 0); round kill {'-' if round_ is None else 'held' if round_['held'] else 'FAILED'}; "
          f"{summary['seconds']} s")
    if args.results:
        write_results(summary, app)
    print(json.dumps(summary, default=str))
    ok = accepted == 0 and lost == 0 and doubled == 0 and (round_ is None or round_["held"])
    sys.exit(0 if ok and math.isfinite(summary["seconds"]) else 1)


def write_results(summary: dict, app: dict | None) -> None:
    """The "Faults and hostile input" section of bench/RESULTS.md."""
    from bench.results import update_section

    st = summary["stages"]
    rows = [f"| {name} | {v['tried']} | {v['accepted']} |" for name, v in st.items() if "tried" in v]
    lines = ["Hostile inputs replayed against the store, settings, zip import and trainer layers and, with `--app`, "
             "through the launched app (gradio_client and raw HTTP, hidden handlers by `fn_index`); kill -9 of a "
             "voter and of a round.", "",
             f"**Hostile inputs tried {summary['hostile_tried']}, accepted {summary['hostile_accepted']}** "
             f"(target 0) · **votes lost {summary['votes_lost']}** (target 0) · votes doubled "
             f"{summary['votes_doubled']}", "", "| stage | tried | accepted |", "|---|---:|---:|", *rows, ""]
    if "kill -9 mid-vote" in st:
        k, r = st["kill -9 mid-vote"], st["kill -9 mid-round"]
        lines += [f"- kill -9 mid-vote: {k['kills']} kills, {k['acked']} votes acknowledged, {k['stored']} stored, "
                  f"lost {k['lost']}, doubled {k['doubled']}, integrity {'ok' if k['integrity_ok'] else 'BROKEN'}.",
                  f"- kill -9 mid-round, resumed with a stale `checkpoint.old`: logged epochs {r['logged_epochs']}, "
                  f"kept its 5 epochs {r['kept_config']}, leftovers {r['leftovers'] or 'none'}.",
                  f"- store under endless generation (keep 100 unrated): "
                  f"{st['disk']['growth_bytes_per_1000_pairs'] / 1024:+.0f} KiB per 1000 pairs, all of it the "
                  f"{st['disk']['rated_pairs']} rated pairs.",
                  f"- zip bomb ({st['zip bomb, many entries']['bomb']}): refused, peak Python allocation "
                  f"{st['zip bomb, many entries']['peak_alloc_mib']} MiB."]
    if app:
        d, sp = app["disk"], app["space"]
        lines += ["", "Through the launched app:", "", "| attack | tried | accepted |", "|---|---:|---:|",
                  *[f"| {k} | {n} | {ok} |" for k, (n, ok) in st["app: hostile requests"]["kinds"].items()], ""]
        shrink = (" (below zero: the pre-filled samples, real toy images each made distinct by one pixel, were "
                  "replaced by generated ones that compress a little better)") if d["growth_per_1000"] < 0 else ""
        lines += [f"- Space-like start (SYSTEM, SPACE_ID, OAuth variables, unreachable OpenID provider): page "
                  f"{sp['page']}, sign-in button {'shown' if sp['login_button'] else 'MISSING'}, votes written by "
                  f"visitors not signed in {sp['votes_written']}.",
                  f"- uploads of {app['upload_mb']} MB over the default 100 MB cap: refused (413), nothing kept; "
                  f"seeds >= 2**63: {app['seed_files_left']} files left; 20 exports with no new data: "
                  f"{app['exports']} file.",
                  f"- **disk growth per 1,000 `/next_pair` calls: {d['growth_per_1000'] / 1024:+.0f} KiB** (data dir, "
                  f"default keep_unrated {d['keep_unrated']}, measured over {d['calls']} calls from the long-run "
                  f"state: {d['unrated_before']} unrated samples before, {d['unrated_after']} after; "
                  f"{d['bytes_before'] >> 10} KiB -> {d['bytes_after'] >> 10} KiB; "
                  f"{d['calls_per_s']} calls/s){shrink}.",
                  f"- each pair the Rate tab shows copies {d['cache_bytes_per_page_pair'] / 1024:.1f} KiB into "
                  "Gradio's cache; copies older than 10 minutes are swept every minute (`studio/ui/app.py` "
                  "CACHE_SWEEP), so the cache holds what was shown lately."]
    lines += ["", f"{summary['seconds']} s in all; max RSS {summary['max_rss_mib']} MiB."]
    update_section("Faults and hostile input", "\n".join(lines))


if __name__ == "__main__":
    if "--child-voter" in sys.argv:
        child_voter(sys.argv[sys.argv.index("--child-voter") + 1])
    elif "--child-round" in sys.argv:
        child_round(sys.argv[sys.argv.index("--child-round") + 1], int(sys.argv[sys.argv.index("--epochs") + 1]))
    else:
        main()
