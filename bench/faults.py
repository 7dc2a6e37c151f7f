"""A bounded fault script: replays the issue-13 attacks against the store, settings, reward-model import and
trainer layers, and kills writers with SIGKILL, then says what was tried, what got through and what was lost.

    python bench/faults.py            # about a minute on a 2-core CPU; the last line is JSON
    python bench/faults.py --quick    # fewer kills, smaller zip bomb

Targets: hostile inputs accepted 0, votes lost 0, votes doubled 0, disk bounded under endless generation.
(The launched app's own endpoints are a later pass; this drives the layers they call.)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = p.parse_args()
    t0 = time.time()
    root = Path(tempfile.mkdtemp(prefix="faults-"))
    try:
        stage_names(root)
        stage_stolen_names(root)
        stage_settings(root)
        stage_seeds(root)
        stage_zip(root, 256 if args.quick else 1024)
        votes = stage_kill_votes(root, 3 if args.quick else 8)
        round_ = stage_kill_round(root)
        stage_disk(root, 200 if args.quick else 1000, 100)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    hostile = {k: v for k, v in TALLY.items() if "tried" in v}
    tried, accepted = sum(v["tried"] for v in hostile.values()), sum(v["accepted"] for v in hostile.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {"hostile_tried": tried, "hostile_accepted": accepted, "votes_acked": votes["acked"],
               "votes_lost": votes["lost"], "votes_doubled": votes["doubled"], "round_kill_held": round_["held"],
               "disk_growth_bytes_per_1000_pairs": TALLY["disk"]["growth_bytes_per_1000_pairs"],
               "max_rss_mib": round(rss), "seconds": round(time.time() - t0, 1), "stages": TALLY}
    print(f"hostile inputs tried {tried}, accepted {accepted} (target 0); votes lost {votes['lost']}, "
          f"doubled {votes['doubled']} (target 0); round kill {'held' if round_['held'] else 'FAILED'}; "
          f"{summary['seconds']} s")
    print(json.dumps(summary, default=str))
    ok = accepted == 0 and votes["lost"] == 0 and votes["doubled"] == 0 and round_["held"]
    sys.exit(0 if ok and math.isfinite(summary["seconds"]) else 1)


if __name__ == "__main__":
    if "--child-voter" in sys.argv:
        child_voter(sys.argv[sys.argv.index("--child-voter") + 1])
    elif "--child-round" in sys.argv:
        child_round(sys.argv[sys.argv.index("--child-round") + 1], int(sys.argv[sys.argv.index("--epochs") + 1]))
    else:
        main()
