"""Next-pair latency in a real browser while a round trains: key press -> the new left image is on screen.

    python bench/rate_latency.py                 # ~5 min: writes the "Rate tab latency" section of RESULTS.md
    python bench/rate_latency.py --votes 10 --quick
    python bench/rate_latency.py --pace 1.5      # a rater who looks 1.5 s at each pair before the key press

Launches the app (studio.ui.build_app on the toy models, default settings but auto rounds off), labels 16 pairs
through the API, starts a round as admin, and while it trains presses 1 in Debian's chromium (Playwright),
timing each vote from the key press to the moment the new left image has loaded. Then, once that round is a
candidate on trial, starts a second round (trained ahead from the candidate, as auto rounds do) and times
votes again while the queue mixes in A/B pairs (each renders `ab_draws` prompt-and-seed draws of both
versions); these votes are ties (3), so the trial stays open. `--pace S` waits S seconds between a pair's
arrival and the next key press (default 0: back to back, which drains the pair queue faster than a person
does). The slowest votes are listed with what the studio was doing when the key was pressed: the pairs ready
in the queue and the round's state and epoch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from results import results_path, update_section  # noqa: E402

WAIT_NEW_IMAGE = """(old) => { const im = document.querySelector('#img-left img');
  return im && im.getAttribute('src') !== old && im.complete && im.naturalWidth > 0; }"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=30)
    ap.add_argument("--pace", type=float, default=0.0, help="seconds between a pair's arrival and the next key")
    ap.add_argument("--quick", action="store_true", help="no bench/RESULTS.md")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from feedback.raters import warm_colours
    from studio.runtime import Studio
    from studio.settings import StudioSettings
    from studio.ui import build_app, launch_kwargs

    password = uuid.uuid4().hex
    studio = Studio(StudioSettings(data_dir=Path(tempfile.mkdtemp(prefix="latency-")), admin_password=password,
                                   snapshot_every_s=0, auto_round_every=0))
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=8).launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(studio.settings))
    from PIL import Image

    token = None
    for i in range(16):
        p = studio.next_pair()
        token = studio.vote(studio.rater("warm", token), p["a"], p["b"],
                            warm_colours(Image.open(p["image_a"]), Image.open(p["image_b"]), p["prompt"]),
                            f"warm-{i}")["rater_token"]
    rid, t_start = studio.start_round(by="bench", force=True), time.time()
    times, ab_times, ab_kinds, verdict = [], [], [], None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                     args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page()
        pg.goto(demo.local_url)
        pg.wait_for_selector("#img-left img")
        pg.fill("#rater-name input, #rater-name textarea", "latency")
        pg.locator("#pair-prompt").click()
        studio.rounds.wait_for(lambda p: p["state"] == "training", 600)
        to_training = time.time() - t_start  # the reward model's fit and the wait for a full pair queue

        slow = []  # (seconds, what the studio was doing at the key press)

        def press(key: str) -> float:
            time.sleep(args.pace)
            old = pg.locator("#img-left img").get_attribute("src")
            snap = studio.rounds.snapshot()
            at = (f"{studio.queue.q.qsize()} pairs ready, round-{snap.get('round')} {snap.get('state')} at epoch "
                  f"{snap.get('epoch')}, {'a candidate on trial' if studio.generator.candidate else 'no trial'}, "
                  f"{time.time() - t_start:.0f} s after round-{rid}'s start")
            t = time.perf_counter()
            pg.keyboard.press(key)
            pg.wait_for_function(WAIT_NEW_IMAGE, arg=old, timeout=60_000)
            dt = time.perf_counter() - t
            slow.append((dt, at))
            return dt

        for _ in range(args.votes):
            times.append(press("1"))
            if not studio.rounds.running:
                break
        state = studio.rounds.snapshot().get("state")
        deadline = time.time() + 600
        while verdict is None and time.time() < deadline:  # its training and checks
            row = studio.store.get_round(rid)
            verdict = row.get("verdict") or (row["status"] if row["status"] in ("failed", "cancelled") else None)
            time.sleep(0.5)
        round_s = time.time() - t_start
        # a candidate's later confirmation looks render on trial, in the round's thread: the next round can
        # start only once they are done (and they may still reject it)
        while studio.rounds.running and time.time() < deadline:
            time.sleep(0.5)
        verdict = studio.store.get_round(rid).get("verdict") or verdict
        if verdict == "candidate":
            cand, served = studio.generator.candidate, studio.generator.version
            studio.start_round(by="bench", force=True)  # trains ahead from the candidate while it is on trial
            studio.rounds.wait_for(lambda p: p["state"] == "training", 600)

            def ab() -> int:  # A/B votes so far (ties included)
                return len(studio.store.comparisons(between=(cand, served), same_seed=True))

            for _ in range(args.votes + 1):
                before = ab()
                dt = press("3")
                if len(ab_times) > len(ab_kinds):  # this vote was on the pair the last press brought
                    ab_kinds.append(ab() > before)
                ab_times.append(dt)
                if studio.generator.candidate != cand or not studio.rounds.running:
                    break
            ab_times = ab_times[:len(ab_kinds)]
        browser.close()
    studio.rounds.cancel()
    studio.close()
    demo.close()

    def row(what: str, sec: list[float]) -> str:
        ms = 1000 * np.array(sec)
        if not len(ms):
            return f"| {what} | 0 | - | - | - |\n"
        return f"| {what} | {len(ms)} | {np.median(ms):.0f} ms | {np.percentile(ms, 90):.0f} ms | {ms.max():.0f} ms |\n"

    kinds = np.array(ab_kinds, bool)
    trial = (f"a candidate on trial ({int(kinds.sum())} of {len(kinds)} next pairs A/B, {studio.settings.ab_draws} "
             f"draws each; share {studio.settings.ab_fraction:g}) and a round training")
    md = (f"Key press -> new left image loaded, in Debian's chromium against `python app.py`'s app on the toy models, "
          f"while a fine-tune round trains in the same process (first round's state at the end: {state}; its "
          f"verdict: {verdict}, {round_s:.0f} s after its start, votes and all; its trainer began loading "
          f"{to_training:.1f} s after its start, once the reward model was fitted and the pair queue full; the "
          f"votes below start then).\n\n"
          "| while | votes | median | p90 | max |\n|---|---|---|---|---|\n"
          + row("a round trains", times) + row(trial, ab_times)
          + row("of these, the next pair A/B", [t for t, k in zip(ab_times, ab_kinds) if k])
          + row("of these, the next pair ordinary", [t for t, k in zip(ab_times, ab_kinds) if not k])
          + f"\nPace: {args.pace:g} s between a pair's arrival and the next key press. The slowest votes, at the key "
          "press:\n\n" + "".join(f"- {1000 * dt:.0f} ms: {at}\n" for dt, at in sorted(slow, reverse=True)[:5]))
    print(md)
    print(f"wrote {update_section('Rate tab latency while a round trains (browser)', md, results_path(args.quick))}")


if __name__ == "__main__":
    main()
