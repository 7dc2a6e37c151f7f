"""The studio runtime without Gradio: a failed round changes nothing served; a restart picks everything up."""

import json
import threading
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from studio.settings import StudioSettings

from .conftest import MODELS
from .studio_fixtures import PASSWORD, TEST_QUEUE, TEST_ROUNDS

pytestmark = pytest.mark.heavy

TOKENS: dict = {}  # (studio, rater name) -> rater_token, as the browser keeps it


def make_studio(tmp_path, **kw):
    if not (MODELS / "toy-lcm").exists() or not (MODELS / "toy-clip").exists():
        pytest.skip("toy models not built yet")
    from studio.runtime import Studio
    from studio.settings import StudioSettings

    s = StudioSettings(model=str(MODELS / "toy-lcm"), clip=str(MODELS / "toy-clip"), data_dir=tmp_path,
                       admin_password=PASSWORD, snapshot_every_s=0,
                       **{**TEST_ROUNDS, **TEST_QUEUE, "round_prompts": 2, "queue_size": 2, "compare_prompts": 2,
                          "auto_round_every": 0, **kw})  # automatic rounds only where a test asks: a fit costs seconds
    return Studio(s)


def label(studio, n, taste=None):
    from PIL import Image

    from feedback.raters import warm_colours

    for _ in range(n):
        p = studio.next_pair()
        choice = (taste or warm_colours)(Image.open(p["image_a"]), Image.open(p["image_b"]), p["prompt"])
        row = studio.vote(studio.rater("sim", TOKENS.get((studio, "sim"))), p["a"], p["b"], choice, str(uuid.uuid4()))
        TOKENS[(studio, "sim")] = row["rater_token"]


def wait_round(studio, timeout=300):
    end = time.time() + timeout
    while studio.rounds.running and time.time() < end:
        time.sleep(0.5)
    return studio.rounds.snapshot()


def test_admin_check():
    from studio.runtime import Studio

    st = Studio.__new__(Studio)
    from studio.settings import StudioSettings

    st.settings = StudioSettings(admin_password="pw", admin_users=("alice",))
    assert st.check_admin("pw") == "admin" and st.check_admin(None, "alice") == "alice"
    for bad in (("", None), ("PW", None), (None, "mallory"), (None, None)):
        with pytest.raises(PermissionError):
            st.check_admin(*bad)


def test_too_few_labels_refuse_a_round(tmp_path):
    studio = make_studio(tmp_path)
    with pytest.raises(ValueError, match="at least 8"):
        studio.start_round("admin")
    assert studio.store.rounds() == []
    studio.close()


def test_failed_round_is_marked_and_serving_goes_on(tmp_path):
    studio = make_studio(tmp_path)
    label(studio, 10)
    before = studio.generator.generate(["a red circle"], [5])[0][0]
    studio.settings.clip = str(tmp_path / "no-such-clip")  # the reward-model fit fails before any round exists
    with pytest.raises(ValueError, match="(?i)clip"):
        studio.start_round("admin", force=True)
    assert studio.store.rounds() == []
    studio.settings.clip = str(MODELS / "toy-clip")
    studio.settings.model = str(tmp_path / "no-such-model")  # the round's trainer fails to load its model
    studio.start_round("admin", force=True)
    p = wait_round(studio)
    assert p["state"] == "failed" and "no-such-model" in p["error"]
    row = studio.store.rounds()[-1]
    assert row["status"] == "failed" and row["error"]
    assert studio.generator.version == "base"
    assert np.array_equal(np.asarray(before), np.asarray(studio.generator.generate(["a red circle"], [5])[0][0]))
    assert studio.next_pair()["a"]  # still serving pairs
    studio.close()


def test_close_cancels_a_training_round_and_waits_for_its_thread(tmp_path):
    """Closing mid-round leaves no round thread behind (an interpreter that exits with it inside torch aborts):
    the round is cancelled at its next epoch, recorded as such, and nothing new is served."""
    studio = make_studio(tmp_path, round_epochs=50)
    label(studio, 10)
    studio.start_round("admin", force=True)
    assert studio.rounds.wait_for(lambda p: p["state"] == "training", 120), studio.rounds.snapshot()
    studio.close()
    assert not studio.rounds.running
    assert studio.store.rounds()[-1]["status"] == "cancelled"
    assert studio.generator.version == "base" and studio.generator.candidate is None


def test_a_round_loads_its_trainer_once_the_pair_queue_is_full(tmp_path):
    """The trainer's load and epoch-0 evaluation take the CPU for seconds; a round lets the pair queue fill first,
    so raters have pairs through them (bench/rate_latency.py: every vote over 2 s came then, the queue empty)."""
    studio = make_studio(tmp_path, queue_size=4)
    label(studio, 10)
    generate, gate = studio.generator.generate, threading.Event()

    def gated(*a, **kw):  # the worker makes no pair until the test opens the gate
        gate.wait(120)
        return generate(*a, **kw)

    def state_becomes(state):
        return studio.rounds.wait_for(lambda p: p["state"] == state, 120) is not None

    studio.generator.generate = gated
    try:
        studio.queue.flush()
        t0 = time.monotonic()
        studio.start_round("admin", force=True)
        assert state_becomes("waiting for the pair queue"), studio.rounds.snapshot()
        time.sleep(1.0)  # no pairs come: the round goes on waiting
        assert studio.rounds.snapshot()["state"] == "waiting for the pair queue"
        assert not studio.queue.q.full()
        gate.set()
        assert state_becomes("training"), studio.rounds.snapshot()
        assert studio.queue.q.full()
        assert wait_round(studio)["state"] == "done"
        elapsed = time.monotonic() - t0
        # the round's time by stage, in its metrics and the History table: the queue wait the test imposed,
        # the fit that start_round did before the round began, and no second counted twice
        stages = studio.store.get_round(1)["metrics"]["stage_seconds"]
        assert stages["waiting for the pair queue"] >= 1.0 and stages["fitting reward model"] > 0, stages
        assert stages["training"] > 0 and "checking" in stages, stages
        assert sum(stages.values()) <= elapsed + 0.5, (stages, elapsed)
        from studio.views import history_rows
        shown = history_rows(studio.store.rounds())[0]["time by stage"]
        assert shown.startswith("fit ") and " · pair queue " in shown and " · training " in shown, shown
    finally:
        gate.set()
        studio.close()


def test_restart_restores_database_active_lora_and_compare(tmp_path):
    studio = make_studio(tmp_path)
    label(studio, 12)
    with pytest.raises(ValueError, match="alignment_guard"):
        studio.update_settings(4, 8.0, 2, 0, alignment_guard=-1.0)
    assert studio.settings.alignment_guard == StudioSettings.alignment_guard  # nothing changed
    assert studio.settings.round_epochs == 2
    assert studio.update_settings(4, 8.0, 2, 0, alignment_guard=0.05, kl_coef=0.01)["kl_coef"] == 0.01
    studio.settings.kl_units = "x0"
    studio.settings.swap_guard = 0.3
    studio.start_round("admin", force=True)  # the round runs with the guards and the KL anchor
    p = wait_round(studio)
    assert p["state"] == "done" and p["verdict"] == "candidate", (p.get("verdict_reason"), p.get("result"))
    assert studio.generator.version == "base" and studio.generator.candidate == "round-1"
    studio.activate("round-1", by="admin")  # an admin's forced promotion
    assert studio.store.get_round(1)["verdict"] == "promoted"
    log = (tmp_path / "rounds" / "1" / "log.jsonl").read_text()
    assert '"kl_to_base"' in log
    lrs = [json.loads(line)["lr"] for line in log.splitlines() if '"lr"' in line]
    assert lrs == [studio.settings.round_lr] * 2  # from the base: no warm-up (A's first gradient is zero)
    assert json.loads((tmp_path / "rounds" / "1" / "config.json").read_text())["kl_units"] == "x0"
    assert studio.store.get_round(1)["metrics"]["guard_weight"] > 0  # relative 0.05, scaled on the rated pairs
    assert studio.store.get_round(1)["metrics"]["swap_weight"] == 0.3  # absolute
    version, rm_version = studio.generator.version, studio.rounds.reward_model.version
    served = np.asarray(studio.generator.generate(["a blue star"], [9])[0][0])
    counts = studio.store.counts()
    studio.close()
    again = make_studio(tmp_path)  # a restart on the same data directory
    assert again.store.counts()["labelled"] == counts["labelled"]
    assert again.generator.version == version == "round-1"
    assert again.rounds.reward_model is not None and again.rounds.reward_model.version == rm_version
    assert np.array_equal(served, np.asarray(again.generator.generate(["a blue star"], [9])[0][0]))
    rows = again.compare()
    assert [r["version"] for r in rows] == ["base", "round-1"]
    rm = again.rounds.reward_model
    for r in rows:  # the reward model's mean score of the version's fixed images
        images = [Image.open(f).convert("RGB") for f in r["images"]]
        assert r["reward"] == pytest.approx(float(rm.score(images, r["prompts"][: len(images)]).mean()), abs=1e-5)

    class Shifted:  # another reward model (another version): the cached scores must not be reused
        version = rm.version + "-other"

        def score(self, images, prompts):
            return rm.score(images, prompts) + 1.0

    again.rounds.reward_model = Shifted()
    shifted = {r["version"]: r["reward"] for r in again.compare()}
    assert all(shifted[r["version"]] == pytest.approx(r["reward"] + 1.0, abs=1e-5) for r in rows)
    again.close()


def test_kl_units_from_the_environment(monkeypatch):
    from studio.settings import StudioSettings

    monkeypatch.setenv("RLCM_ADMIN_PASSWORD", "pw")
    monkeypatch.setenv("RLCM_KL_UNITS", "x0")
    assert StudioSettings.from_env().kl_units == "x0"
    monkeypatch.setenv("RLCM_KL_UNITS", "pixels")
    with pytest.raises(ValueError, match="valid: action, x0"):
        StudioSettings.from_env()


def test_an_auto_round_refused_for_a_chance_level_reward_model_is_tried_again_after_a_few_labels(tmp_path):
    """Two raters who always disagree leave the reward model at chance: the automatic round is refused, and the
    next try comes AUTO_RETRY_LABELS labels later, not a whole `auto_round_every` later."""
    import threading

    from studio.runtime import AUTO_RETRY_LABELS

    studio = make_studio(tmp_path, auto_round_every=10)
    fits = lambda: len(list((tmp_path / "reward_models").glob("*.zip")))  # noqa: E731
    tokens = {}

    def vote(p, rater, choice):
        row = studio.vote(studio.rater(rater, tokens.get(rater)), p["a"], p["b"], choice, str(uuid.uuid4()))
        tokens[rater] = row["rater_token"]
        for t in threading.enumerate():  # the automatic round's thread: fit the model, then refuse or start
            if t.name == "auto-round":
                t.join(timeout=120)

    try:
        for _ in range(5):  # 10 labels, every pair judged both ways
            p = studio.next_pair()
            vote(p, "ann", "a")
            vote(p, "bob", "b")
        assert fits() == 1 and not studio.rounds.running
        assert "no better than chance" in studio.auto_note
        for i in range(AUTO_RETRY_LABELS):
            assert fits() == 1, f"tried again after {i} labels"
            p = studio.next_pair()
            vote(p, "ann" if i % 2 else "bob", "a" if i % 2 else "b")
        assert fits() == 2 and not studio.rounds.running
    finally:
        studio.close()


def test_close_waits_for_an_automatic_rounds_fit_and_starts_no_round_after_it(tmp_path):
    """The 10th label starts an automatic round's fit in the background; closing the studio at once joins that
    fit (a process that exits with it inside torch aborts) and no round starts once the studio is closed."""
    import threading

    studio = make_studio(tmp_path, auto_round_every=10)
    try:
        label(studio, 10)
        assert any(t.name == "auto-round" and t.is_alive() for t in threading.enumerate())
    finally:
        studio.close()
    assert not [t.name for t in threading.enumerate() if t.name in ("auto-round", "warm-up") and t.is_alive()]
    assert not studio.rounds.running and studio.store.rounds() == []


def test_a_studio_without_rounds_starts_its_first_automatic_round_at_auto_round_first_labels(tmp_path):
    """Round 1 starts after `auto_round_first` labels, not a whole `auto_round_every`: people wait for it."""
    import threading

    studio = make_studio(tmp_path, auto_round_every=20, auto_round_first=9)
    started = lambda: any(t.name == "auto-round" for t in threading.enumerate())  # noqa: E731
    try:
        label(studio, 8)
        assert not started() and studio.store.rounds() == []
        label(studio, 1)
        assert started()
    finally:
        studio.close()


def test_only_rounds_from_an_earlier_lora_warm_their_learning_rate_up(tmp_path):
    """From the base, A's first gradient is zero and the first step moves only B; from an earlier round's LoRA the
    first Adam steps would move every weight by about lr (rlcm.trainer.RLCMConfig.lr_warmup_epochs)."""
    from studio.rounds import keep_every, round_config

    s = StudioSettings(data_dir=tmp_path, round_lr_warmup=3)
    assert round_config(s, tmp_path / "r1", 1, None).lr_warmup_epochs == 0
    assert round_config(s, tmp_path / "r2", 2, str(tmp_path / "adapter.safetensors")).lr_warmup_epochs == 3
    # and rounds from the base train longer: their LoRA starts at zero, and no fidelity allowance is spent yet
    s = StudioSettings(data_dir=tmp_path, round_epochs=8, round_epochs_base_factor=1.5)
    base, chained = round_config(s, tmp_path / "r1", 1, None), round_config(s, tmp_path / "r2", 2, "adapter")
    assert (base.epochs, chained.epochs) == (12, 8)
    assert (base.eval_every, chained.eval_every) == (0, 0)  # the keeper evaluates after training
    assert (keep_every(base.epochs), keep_every(chained.epochs)) == (3, 2)  # 4 saved candidate epochs


def test_round_seed_gives_a_round_other_training_prompts_and_keeps_rounds_apart(tmp_path):
    """A round's seed is its number (+ 1000 x round_seed): rounds of one studio differ, and a studio with another
    round_seed trains its round 1 on other prompts (a live-loop replicate that is a new draw of round 1)."""
    from rlcm.prompts import get_prompts
    from studio.rounds import round_config

    default, other = StudioSettings(data_dir=tmp_path), StudioSettings(data_dir=tmp_path, round_seed=3)
    seeds = [round_config(s, tmp_path / f"r{rid}", rid).seed for s in (default, other) for rid in (1, 2)]
    assert seeds == [1, 2, 3001, 3002]
    pools = [get_prompts("toy", "train", 256, seed=round_config(s, tmp_path / "r1", 1).seed) for s in (default, other)]
    assert set(pools[0]) != set(pools[1])
    with pytest.raises(ValueError, match="round_seed"):
        StudioSettings(data_dir=tmp_path, round_seed=-1).validate()


def test_a_round_draws_its_prompts_from_round_train_prompts_distinct_training_prompts(tmp_path):
    """A round samples its prompts from a pool of `round_train_prompts` distinct training prompts, none of them held
    out (16, the trainer's default, taught a taste that reached held-out prompts little)."""
    from rlcm.prompts import get_prompts
    from rlcm.trainer import RLCMTrainer
    from studio.rounds import round_config

    s = StudioSettings(data_dir=tmp_path, round_train_prompts=200, model=str(MODELS / "toy-lcm"))
    trainer = RLCMTrainer(round_config(s, tmp_path / "r1", 1, None), reward_fn=lambda im, p: np.zeros(len(im)))
    pool = trainer.train_prompts
    assert len(pool) == len(set(pool)) == 200 and not set(pool) & set(get_prompts("toy", "heldout", 465))
    with pytest.raises(ValueError, match="round_train_prompts"):
        StudioSettings(data_dir=tmp_path, round_train_prompts=0).validate()
    with pytest.raises(ValueError, match="round_epochs_base_factor"):
        StudioSettings(data_dir=tmp_path, round_epochs_base_factor=0).validate()
    with pytest.raises(ValueError, match="round_lr_warmup"):
        StudioSettings(data_dir=tmp_path, round_lr_warmup=-1).validate()


def test_a_round_refits_its_reward_model_on_labels_that_arrive_while_it_trains(tmp_path):
    """Round 1 starts at a handful of labels and trains while people rate more: once `round_rm_refresh` new labels
    arrived, the round refits the reward model between epochs and trains the rest on the new one, which is then
    the studio's, the round's (a resume goes on with it) and what its History row reports."""
    from studio.views import history_rows

    from feedback.raters import big_centred

    studio = make_studio(tmp_path, round_epochs=3, round_rm_refresh=4, auto_round_every=0)
    try:
        label(studio, 16, big_centred)  # a taste the reward model learns from a few labels
        held = [studio.next_pair() for _ in range(6)]  # shown before the round starts, rated while it trains
        studio.start_round("admin", force=True)
        first = studio.reward_model_info()
        assert first["n_pairs"] == 16, first
        for p in held:
            choice = big_centred(Image.open(p["image_a"]), Image.open(p["image_b"]), p["prompt"])
            studio.vote(studio.rater("sim", TOKENS.get((studio, "sim"))), p["a"], p["b"], choice, str(uuid.uuid4()))
        p = studio.rounds.wait_for(lambda p: any("reward_model_refit" in r for r in p["rows"]), 120)
        assert p is not None, studio.rounds.snapshot()
        refit_epoch = next(r["epoch"] for r in p["rows"] if "reward_model_refit" in r)
        assert 0 <= refit_epoch < 3
        assert wait_round(studio)["state"] == "done"
        row = studio.store.get_round(1)
        m, now = row["metrics"], studio.reward_model_info()
        assert now["version"] != first["version"] and now["n_pairs"] == 22
        assert row["reward_model_version"] == now["version"]
        assert [r["epoch"] for r in m["reward_model_refits"]] == [refit_epoch]
        assert m["reward_model"]["n_pairs"] == now["n_pairs"]
        # the trainer went on with the new model's reward (its guard is scaled to it): not the one it started with
        assert m["guard_weight"] == pytest.approx(m["reward_model_refits"][0]["guard_weight"])
        assert "refitted on new labels after epoch" in history_rows(studio.store.rounds())[0]["reward-model accuracy"]
    finally:
        studio.close()
