"""Safe in public (issue 13), proved through the launched app: a Space start, names nobody can borrow, roles and
privacy (hidden handlers too), bounded uploads / samples / seeds / exports, settings, one-line user mistakes.

Every test checks that a refused request wrote and changed nothing. One app serves the module (small caps:
1 MB uploads, 4 unrated samples kept); the Space start and the settings restart build their own.
"""

import json
import logging
import math
import os
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from .conftest import MODELS, ROOT
from .studio_fixtures import PASSWORD, SETTINGS_ARGS, launch_studio

KEEP, QUEUE = 4, 2  # unrated samples kept, pairs queued: small, so that pruning shows within a few calls


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    cache = tmp_path_factory.mktemp("gradio-cache")  # gradio's upload/cache folder, this app's alone
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    studio, demo = launch_studio(tmp_path_factory.mktemp("public"), keep_unrated=KEEP, queue_size=QUEUE,
                                 max_upload_mb=1, steps=2)
    client = Client(demo.local_url, verbose=False, download_files=False)
    yield studio, demo, client, cache
    studio.close()
    demo.close()
    if old is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = old


def claims(studio) -> set[str]:
    return {r[0] for r in studio.store._db().execute("SELECT name FROM rater_tokens")}


def written(studio) -> dict:
    """What a refused request must leave as it was: votes, raters, claimed names, rounds, settings, and every file
    in the data dir outside the image store and the database (the pair queue adds images on its own)."""
    c = studio.store.counts()
    d = studio.settings.data_dir
    files = sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")
                   if p.is_file() and "images" not in p.relative_to(d).parts and not p.name.startswith("feedback.db"))
    return {"votes": {k: c[k] for k in ("comparisons", "labelled", "raters", "undone", "a", "b", "tie", "skip")},
            "claims": claims(studio), "rounds": len(studio.store.rounds()), "settings": studio.settings.editable(),
            "files": files}


def refused(client, *args, match: str = "", **kw) -> str:
    with pytest.raises(Exception, match=f"(?i){match}") as e:
        client.predict(*args, **kw)
    return str(e.value)


def hidden(client, api_name: str, *args):
    """Call a handler hidden from the API page (api_visibility="private") by its fn_index from /config, as any
    script can: gradio_client refuses private ones itself, the server does not."""
    fn_index = next(d["id"] for d in client.config["dependencies"] if d.get("api_name") == api_name)
    client.endpoints[fn_index].is_valid = True
    return client.predict(*args, fn_index=fn_index)


def raw_call(url: str, api_name: str, *args) -> tuple[str, str]:
    """POST /gradio_api/call/<api_name> with JSON that may hold NaN and Infinity (gradio_client refuses to send
    them, a script need not), then read its event stream: ("complete" or "error", the last event's data)."""
    r = httpx.post(f"{url}gradio_api/call/{api_name}", content=json.dumps({"data": list(args)}),
                   headers={"content-type": "application/json"}, timeout=60)
    r.raise_for_status()
    stream = httpx.get(f"{url}gradio_api/call/{api_name}/{r.json()['event_id']}", timeout=60).text
    kind, _, data = stream.rsplit("event: ", 1)[-1].partition("\n")
    return kind.strip(), data


def image_files(studio) -> int:
    return sum(1 for p in studio.store.images_dir.rglob("*") if p.is_file())


def settle(studio, timeout: float = 30.0) -> None:
    """Wait until the pair queue is full and idle: image files and sample rows agree and stop changing."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        now = (studio.queue.q.full(), image_files(studio), studio.store.counts()["samples"])
        if now[0] and now[1] == now[2] and now == last:
            return
        last = now
        time.sleep(0.25)
    raise AssertionError(f"pair queue never settled: full, files, rows = {last}")


def test_space_start_asks_visitors_to_sign_in(monkeypatch, tmp_path):
    # what a Space sets (SYSTEM=spaces is how Gradio knows it runs on one), with no reachable OpenID provider
    for k, v in dict(SYSTEM="spaces", SPACE_ID="someone/rlcm-studio", OAUTH_CLIENT_ID="client-id",
                     OAUTH_CLIENT_SECRET="client-secret", OAUTH_SCOPES="openid profile",
                     OPENID_PROVIDER_URL="http://127.0.0.1:9", GRADIO_TEMP_DIR=str(tmp_path / "cache")).items():
        monkeypatch.setenv(k, v)
    import gradio.oauth

    for k in ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL"):
        monkeypatch.setattr(gradio.oauth, k, os.environ[k])  # Gradio reads them at import: another app came first
    studio, demo = launch_studio(tmp_path / "data", queue_size=1)
    try:
        assert httpx.get(demo.local_url, timeout=30).status_code == 200
        config = httpx.get(demo.local_url + "config", timeout=30)
        assert config.status_code == 200
        buttons = [c["props"].get("value") for c in config.json()["components"] if c["type"] == "button"]
        assert "Sign in with Hugging Face" in buttons
        client = Client(demo.local_url, verbose=False, download_files=False)
        p = client.predict(api_name="/next_pair")
        before = written(studio)
        for name in ("alice", "", "hf:alice"):
            refused(client, name, p["a"], p["b"], "a", str(uuid.uuid4()), None, api_name="/vote", match="sign in")
            refused(client, name, None, api_name="/undo_vote", match="sign in")
        # the page itself: it shows a pair and says to sign in; its vote button refuses (no name box on a Space)
        assert "sign in" in hidden(client, "first_pair", "", {})[-1]
        with pytest.raises(Exception, match="(?i)sign in"):
            hidden(client, "vote_a", "", {})
        assert written(studio) == before and not claims(studio)
    finally:
        studio.close()
        demo.close()


HOSTILE = {"signed-in prefix": "hf:alice", "Cyrillic a": "\u0430lice", "full width": "\uff41\uff4c\uff49\uff43\uff45",
           "capitals": "ALICE", "no token": "alice"}


def test_names_nobody_can_borrow(app):
    studio, _, client, _ = app
    p, q = client.predict(api_name="/next_pair"), client.predict(api_name="/next_pair")
    first = client.predict("alice", p["a"], p["b"], "a", p["client_id"], None, api_name="/vote")
    token = first["rater_token"]
    client.predict("alice", q["a"], q["b"], "b", q["client_id"], token, api_name="/vote")
    mine = [(c["id"], c["choice"]) for c in studio.store.comparisons() if c["rater"] == "alice"]
    assert len(mine) == 2
    before = written(studio)
    for what, name in HOSTILE.items():
        for tok in (None, "x" * 32, token[:-1] + ("A" if token[-1] != "A" else "B")):
            refused(client, name, q["a"], p["a"], "a", str(uuid.uuid4()), tok, api_name="/vote",
                    match="taken|looks|hf:")
            if what == "Cyrillic a":  # a look-alike nobody claimed has no votes: nothing to undo
                assert client.predict(name, tok, api_name="/undo_vote") == {"undone": None}
            else:
                refused(client, name, tok, api_name="/undo_vote", match="taken|hf:")
    refused(client, 12345, q["a"], p["a"], "a", str(uuid.uuid4()), None, api_name="/vote", match="text")
    assert written(studio) == before
    # the same pair again under fresh client ids, either order: recorded once
    for i in range(3):
        a, b = (p["a"], p["b"]) if i % 2 else (p["b"], p["a"])
        again = client.predict("alice", a, b, "b", str(uuid.uuid4()), token, api_name="/vote")
        assert not again["created"] and again["id"] == first["id"]
    assert written(studio) == before
    assert [(c["id"], c["choice"]) for c in studio.store.comparisons() if c["rater"] == "alice"] == mine


def foreign_preferences(tmp_path: Path) -> Path:
    """A valid Parquet export from another studio (mallory's votes): importing it would change the counts."""
    import numpy as np
    from PIL import Image

    from feedback import FeedbackStore, identity

    with FeedbackStore(tmp_path / "elsewhere") as other:
        ids = [other.add_sample(Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)), "a red circle", seed=i,
                                steps=2, guidance=8.0) for i in range(2)]
        other.vote(identity.typed("mallory"), ids[0], ids[1], "a", "m-1")
        return other.export_parquet(tmp_path / "mallory.parquet")


ADMIN_ONLY = {"/export_data": (), "/generate": ("a stranger's prompt", 1), "/import_preferences": (None,),
              "/save_settings": SETTINGS_ARGS, "/activate": ("base",), "/start_round": (True,),
              "/reject_candidate": ()}


def test_admin_endpoints_refuse_non_admins(app, tmp_path):
    studio, _, client, _ = app
    parquet = str(foreign_preferences(tmp_path))
    before, samples = written(studio), {s["prompt"] for s in studio.store.samples()}
    for endpoint, args in ADMIN_ONLY.items():
        args = tuple(parquet if a is None else a for a in args)
        for password in ("", "not-the-password", PASSWORD.upper()):
            refused(client, password, *args, api_name=endpoint, match="admin")
    assert written(studio) == before and not (studio.settings.data_dir / "exports").exists()
    assert "a stranger's prompt" not in {s["prompt"] for s in studio.store.samples()} - samples


def test_hidden_handlers_check_the_caller(app, tmp_path):
    from gradio_client import handle_file

    studio, _, client, _ = app
    p = client.predict(api_name="/next_pair")
    client.predict("carol", p["a"], p["b"], "a", p["client_id"], None, api_name="/vote")  # carol claims her name
    hidden(client, "first_pair", "carol", {})  # this session now has a pair on screen
    parquet = handle_file(str(foreign_preferences(tmp_path)))
    with zipfile.ZipFile(tmp_path / "rm.zip", "w") as z:  # the reward-model import takes a .zip
        z.writestr("config.json", "{}")
    rm_zip = handle_file(str(tmp_path / "rm.zip"))
    before = written(studio)
    for tokens in ({}, {"carol": ["carol", "x" * 32]}, {"": ["carol", None]}):
        name = "" if "" in tokens else "carol"
        with pytest.raises(Exception, match="(?i)taken|name"):
            hidden(client, "vote_a", name, tokens)  # the Rate tab's "left is better"
        with pytest.raises(Exception, match="(?i)taken|name"):
            hidden(client, "undo", name, tokens)
    for tokens in ({"": 5}, {"": ["carol", 12345]}, {"carol": "x"}, "not a dict"):  # a script's browser storage
        with pytest.raises(Exception, match="(?i)taken|name|text"):
            hidden(client, "vote_a", "carol" if "carol" in tokens else "", tokens)
    for api_name, args in (("export_data", ("",)), ("raters", ("",)), ("upload", ("", rm_zip)),
                           ("upload_1", ("", parquet)), ("push_dataset", ("", "someone/data")),
                           ("fit_reward_model", ("",)), ("cancel_round", ("",))):
        with pytest.raises(Exception, match="(?i)admin"):
            hidden(client, api_name, *args)
    assert written(studio) == before


def test_no_server_path_in_public_output(app):
    studio, demo, client, _ = app
    refresh = hidden(client, "refresh", "base")  # the Train tab's timer
    outputs = {"/config": httpx.get(demo.local_url + "config", timeout=30).text,
               "/status": client.predict(api_name="/status"), "/next_pair": client.predict(api_name="/next_pair"),
               "/compare": client.predict(api_name="/compare"), "first_pair": hidden(client, "first_pair", "", {}),
               "counts": hidden(client, "counts"), "reward view": hidden(client, "view"), "train": refresh[:3],
               "vote error": refused(client, "dave", "no-such-a", "no-such-b", "a", "c-1", None, api_name="/vote"),
               "settings error": refused(client, PASSWORD, 99, *SETTINGS_ARGS[1:], api_name="/save_settings")}
    d = studio.settings.data_dir
    for secret in {str(d), str(d.resolve()), str(ROOT), str(MODELS)}:
        for what, out in outputs.items():
            assert secret not in (out if isinstance(out, str) else json.dumps(out, default=str)), (what, secret)


def test_upload_over_the_cap_is_refused_and_not_kept(app, tmp_path):
    from gradio_client import handle_file

    studio, demo, client, cache = app
    listing = lambda: sorted((str(p), p.stat().st_size) for p in cache.rglob("*") if p.is_file())  # noqa: E731
    before, data = listing(), written(studio)
    blob = os.urandom(2 * 1024 * 1024)  # 2 MB against the 1 MB cap
    r = httpx.post(demo.local_url + "gradio_api/upload", files={"files": ("big.parquet", blob)}, timeout=60)
    assert r.status_code == 413, r.text
    big = tmp_path / "big.parquet"
    big.write_bytes(blob)
    with pytest.raises(Exception, match="(?i)maximum file size|exceed"):  # the page's import, as admin
        hidden(client, "upload_1", PASSWORD, handle_file(str(big)))
    assert listing() == before and written(studio) == data
    assert not [p for p in (*cache.rglob("*"), *studio.settings.data_dir.rglob("*")) if p.is_file()
                and p.stat().st_size >= 1024 * 1024]


def test_next_pair_keeps_unrated_samples_bounded(app):
    studio, _, client, _ = app
    bound = KEEP + studio.queue.shown.maxlen + 2 * QUEUE + 2  # kept + shown lately + queued + one in the making
    calls = 30
    assert 2 * calls > bound  # without pruning the calls alone would pass the bound
    rated = {x for c in studio.store.comparisons(include_skips=True) for x in (c["sample_a"], c["sample_b"])}
    for _ in range(calls):
        client.predict(api_name="/next_pair")
    settle(studio)  # the queue prunes after each pair it queues
    unrated = studio.store.prune_unrated(10**9)["unrated"]  # a limit above everything only counts
    assert unrated <= bound, (unrated, bound)
    assert rated <= {s["id"] for s in studio.store.samples()}  # rated samples are never pruned
    assert image_files(studio) == studio.store.counts()["samples"]


def test_huge_seeds_write_nothing(app):
    studio, _, client, _ = app
    prompt = "a green square seeded from far away"
    settle(studio)
    before, files = written(studio), image_files(studio)
    for seed in (2**63, 2**63 + 1, 2**64, 10**30, -1):
        refused(client, PASSWORD, prompt, seed, api_name="/generate")
    settle(studio)
    assert written(studio) == before and image_files(studio) == files
    assert prompt not in {s["prompt"] for s in studio.store.samples()}
    ok = client.predict(PASSWORD, prompt, 2**63 - 1, api_name="/generate")  # the largest seed allowed works
    assert studio.store.get_sample(ok["id"])["prompt"] == prompt and studio.store.image_path(ok["id"]).exists()


def test_export_spam_yields_one_file(app):
    studio, _, client, cache = app
    p = client.predict(api_name="/next_pair")
    client.predict("erin", p["a"], p["b"], "tie", p["client_id"], None, api_name="/vote")
    jobs = [client.submit(PASSWORD, api_name="/export_data") for _ in range(6)]  # at once, then again
    paths = [j.result()["path"] for j in jobs] + [client.predict(PASSWORD, api_name="/export_data")["path"]
                                                  for _ in range(3)]
    exports = sorted(p.name for p in (studio.settings.data_dir / "exports").iterdir())
    assert len(exports) == 1 and exports[0].startswith("preferences-") and exports[0].endswith(".parquet")
    assert len(set(paths)) == 1 and len([p for p in cache.rglob("preferences-*") if p.is_file()]) == 1


HOSTILE_NUMBERS = (math.nan, math.inf, -math.inf, 1e300, -1.0)


def test_hostile_settings_are_refused_and_valid_ones_persist(app):
    from studio.runtime import Studio
    from studio.settings import EDITABLE, StudioSettings

    studio, demo, client, _ = app
    valid = [3, 5.5, 2, 0, 0.3, 0.05, 0.25, 0.1]  # steps, guidance, epochs, auto, guard, kl, ab, swap
    before = written(studio)
    for i, name in enumerate(EDITABLE):
        for bad in HOSTILE_NUMBERS:
            kind, message = raw_call(demo.local_url, "save_settings", PASSWORD, *valid[:i], bad, *valid[i + 1:])
            assert kind == "error" and name in message, (name, bad, kind, message)
    assert written(studio) == before
    saved = client.predict(PASSWORD, *valid, api_name="/save_settings")
    assert list(saved.values()) == valid
    # a restart, as app.py does it: settings from the environment, then the admin's saved edits on top
    again = Studio(StudioSettings.from_env(model=str(MODELS / "toy-lcm"), clip=str(MODELS / "toy-clip"),
                                           data_dir=studio.settings.data_dir, admin_password=PASSWORD),
                   start_workers=False)
    try:
        assert again.settings.editable() == saved
    finally:
        again.close()


def test_a_user_mistake_is_one_log_line(app, caplog, capfd):
    studio, demo, client, _ = app
    studio_url = demo.local_url
    p = client.predict(api_name="/next_pair")
    capfd.readouterr()
    before = written(studio)
    with caplog.at_level(logging.WARNING, logger="rlcm.studio"):
        refused(client, "", p["a"], p["b"], "a", str(uuid.uuid4()), None, api_name="/vote", match="name")
        refused(client, "wrong", api_name="/export_data", match="admin")
        assert raw_call(studio_url, "save_settings", PASSWORD, 3, math.nan, *SETTINGS_ARGS[2:])[0] == "error"
    lines = [r.getMessage() for r in caplog.records if r.name == "rlcm.studio"]
    assert len(lines) == 3 and all("user error" in m and "\n" not in m for m in lines), lines
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err
    assert written(studio) == before
