"""The Gradio app through gradio_client: votes recorded exactly, admin-only actions, bad input, a live round."""

import time
import uuid

import pytest
from gradio_client import Client

from .studio_fixtures import PASSWORD, SETTINGS_ARGS, label_pairs, launch_studio, vote

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    studio, demo = launch_studio(tmp_path_factory.mktemp("studio"))
    client = Client(demo.local_url, verbose=False)
    client._studio = studio
    yield studio, client
    studio.close()
    demo.close()


def counts(studio):
    return studio.store.counts()


def test_vote_is_recorded_exactly_once(app):
    studio, client = app
    p = client.predict(api_name="/next_pair")
    assert p["a"] != p["b"] and studio.store.get_sample(p["a"])["prompt"] == p["prompt"]
    before = counts(studio)["comparisons"]
    r1 = client.predict("alice", p["a"], p["b"], "b", p["client_id"], None, api_name="/vote")
    token = r1["rater_token"]
    assert token and len(token) >= 16  # the first vote claims the name and hands back its secret
    r2 = client.predict("alice", p["a"], p["b"], "b", p["client_id"], token, api_name="/vote")  # a retried submit
    assert r1["created"] and not r2["created"] and r1["id"] == r2["id"]
    rows = [c for c in studio.store.comparisons(include_skips=True) if c["id"] == r1["id"]]
    assert len(rows) == 1 and counts(studio)["comparisons"] == before + 1
    row = rows[0]
    assert (row["sample_a"], row["sample_b"], row["choice"], row["rater"]) == (p["a"], p["b"], "b", "alice")
    with pytest.raises(Exception, match="(?i)taken"):  # someone else can't undo alice's vote
        client.predict("alice", None, api_name="/undo_vote")
    assert counts(studio)["comparisons"] == before + 1
    undone = client.predict("alice", token, api_name="/undo_vote")
    assert undone["undone"] == r1["id"] and counts(studio)["comparisons"] == before


@pytest.mark.parametrize("args, message", [
    (("bob", "unknown-sample", None, "a"), "unknown"),
    (("bob", None, None, "maybe"), "choice"),
    (("", None, None, "a"), "name"),
])
def test_bad_votes_are_refused_and_change_nothing(app, args, message):
    studio, client = app
    p = client.predict(api_name="/next_pair")
    rater, a, b, choice = args
    before = counts(studio)
    with pytest.raises(Exception, match=f"(?i){message}"):
        client.predict(rater, a or p["a"], b or p["b"], choice, str(uuid.uuid4()), None, api_name="/vote")
    assert counts(studio)["comparisons"] == before["comparisons"]
    assert not rater or not studio.store.rater_claimed(rater)  # a refused first vote claims no name


@pytest.mark.parametrize("prompt", ["", "   ", "x" * 5000], ids=["empty", "blank", "huge"])
def test_bad_prompts_are_refused(app, prompt):
    studio, client = app
    before = counts(studio)["samples"]
    with pytest.raises(Exception, match="(?i)prompt"):
        client.predict(PASSWORD, prompt, 0, api_name="/generate")
    assert counts(studio)["samples"] <= before + studio.queue.q.maxsize * 2  # only the queue may have grown


def test_malformed_upload_is_refused(app, tmp_path):
    studio, client = app
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    before = counts(studio)
    with pytest.raises(Exception):
        client.predict(PASSWORD, str(bad), api_name="/import_preferences")
    assert counts(studio)["comparisons"] == before["comparisons"]


@pytest.mark.parametrize("endpoint, args", [
    ("/start_round", (True,)), ("/cancel_round", ()), ("/reject_candidate", ()), ("/activate", ("base",)),
    ("/save_settings", SETTINGS_ARGS), ("/fit_reward_model", ()), ("/export_data", ()),
    ("/generate", ("a red circle", 1)),
])
def test_admin_endpoints_refuse_non_admins(app, endpoint, args):
    studio, client = app
    rounds, steps = len(studio.store.rounds()), studio.settings.steps
    with pytest.raises(Exception, match="(?i)admin"):
        client.predict("not-the-password", *args, api_name=endpoint)
    assert len(studio.store.rounds()) == rounds and studio.settings.steps == steps


def test_round_becomes_a_candidate_and_people_promote_it(app):
    studio, client = app
    label_pairs(client, 12)
    seed_images = studio.generator.generate(["a red circle on a blue background"], [123])[0][0]
    assert client.predict(PASSWORD, True, api_name="/start_round").startswith("round")
    deadline = time.time() + 600
    while time.time() < deadline:
        st = client.predict(api_name="/status")
        if st["round"].get("state") in ("done", "failed", "cancelled"):
            break
        time.sleep(1)
    assert st["round"]["state"] == "done" and st["round"]["verdict"] == "candidate", st["round"]
    cand = st["candidate"]
    assert cand.startswith("round-") and st["version"] == "base"  # finished is not served
    row = studio.store.rounds()[-1]
    assert row["status"] == "done" and row["verdict"] == "candidate" and row["metrics"]["reward_after"] is not None
    assert row["config"]["init_version"] == "base"
    # the Train tab's curve has its held-out points: the start's and the handed-over epoch's, evaluated after training
    held_out = [r["epoch"] for r in studio.train_view()[2] if "eval_reward_mean" in r]
    assert held_out[0] == 0 and row["metrics"]["epoch_served"] in held_out, held_out
    # people prefer the candidate in A/B pairs (voted through the API, as a browser would)
    from PIL import Image

    for i in range(60):
        if client.predict(api_name="/status")["candidate"] is None:
            break
        p = client.predict(api_name="/next_pair")
        gens = [studio.store.get_sample(p[k])["generator"] for k in ("a", "b")]
        if cand not in gens:  # an ordinary pair: vote with the usual taste
            from feedback.raters import warm_colours

            a, b = (Image.open(studio.store.image_path(p[k])) for k in ("a", "b"))
            choice = warm_colours(a, b, p["prompt"])
        else:
            choice = "a" if gens[0] == cand else "b"
        vote(client, "sim", p["a"], p["b"], choice, p["client_id"])
    st = client.predict(api_name="/status")
    assert st["version"] == cand and st["candidate"] is None
    after = studio.generator.generate(["a red circle on a blue background"], [123])[0][0]
    import numpy as np

    assert not np.array_equal(np.asarray(seed_images), np.asarray(after))  # the served LoRA changed the model
    board, _, table = client.predict(api_name="/compare")
    assert [r[0] for r in table["data"]] == ["base", cand]
    served = [r for r in board["data"] if r[0] == cand][0]
    assert served[1] == "served" and served[2] >= 6
    # any version can be made active again (a rollback), even one created after launch
    assert "base" in client.predict(PASSWORD, "base", api_name="/activate")
    assert studio.generator.version == "base"
    assert cand in client.predict(PASSWORD, cand, api_name="/activate")
