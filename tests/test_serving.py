"""The served generator (LoRA hot swap under the generation lock) and the pair queue."""

import random
import threading

import numpy as np

from rlcm.arch import lcm_pipeline, random_lcm_lora
from studio.serving import ServedGenerator
from studio.settings import StudioSettings


def test_activate_hotswap_and_back_to_base(tmp_path):
    lcm_pipeline("tiny").save_pretrained(tmp_path / "model")
    loras = [random_lcm_lora(lcm_pipeline("tiny"), tmp_path / f"lora{i}", rank=4, seed=i) for i in (1, 2)]
    gen = ServedGenerator(StudioSettings(model=str(tmp_path / "model"), steps=3, data_dir=tmp_path / "d"))
    shot = lambda: np.asarray(gen.generate(["a red circle"], [7])[0][0])  # noqa: E731
    base = shot()
    gen.activate("round-1", loras[0])
    one = shot()
    gen.activate("round-2", loras[1])  # hot swap in place
    two = shot()
    gen.activate("base", None)
    assert np.array_equal(shot(), base)
    gen.activate("round-1", loras[0])
    assert np.array_equal(shot(), one) and gen.version == "round-1"
    assert not np.array_equal(one, base) and not np.array_equal(two, one)


def test_swaps_never_land_mid_generation(tmp_path):
    lcm_pipeline("tiny").save_pretrained(tmp_path / "model")
    loras = [random_lcm_lora(lcm_pipeline("tiny"), tmp_path / f"lora{i}", rank=4, seed=i) for i in (1, 2)]
    gen = ServedGenerator(StudioSettings(model=str(tmp_path / "model"), steps=3, data_dir=tmp_path / "d"))
    expected = {}
    for v, lora in (("round-1", loras[0]), ("round-2", loras[1])):
        gen.activate(v, lora)
        expected[v] = np.asarray(gen.generate(["a blue star"], [3])[0][0])
    errors, seen = [], []

    def swapper():
        for i in range(10):
            v = ("round-1", "round-2")[i % 2]
            gen.activate(v, loras[i % 2])

    def sampler():
        for _ in range(10):
            images, version = gen.generate(["a blue star"], [3])
            seen.append(version)
            if not np.array_equal(np.asarray(images[0]), expected[version]):
                errors.append(version)

    threads = [threading.Thread(target=swapper), threading.Thread(target=sampler)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(seen) == 10  # every image is exactly the version it claims



def test_queue_shows_the_pair_the_reward_model_is_least_sure_about(tmp_path, clip):  # noqa: F811
    """With a fitted reward model, each queued pair is the most uncertain of its candidates (checked against
    the model's own pair probabilities on the images that were stored); without one, the most distinct pair."""
    import torch

    import reward_model
    from feedback import RATERS, FeedbackStore, simulate
    from studio.serving import PairQueue
    from tests.fixtures_rm import fill_store

    lcm_pipeline("tiny").save_pretrained(tmp_path / "model")
    gen = ServedGenerator(StudioSettings(model=str(tmp_path / "model"), steps=2, data_dir=tmp_path / "d"))
    train = FeedbackStore(tmp_path / "train")
    fill_store(train, n_prompts=4, n_seeds=5)
    simulate(train, RATERS["warm_colours"], 40, "sim", rng=0)
    rm, _ = reward_model.fit(train, clip, reward_model.FitConfig(ensemble_size=3, max_epochs=50))

    store = FeedbackStore(tmp_path / "live")
    current = {"rm": None}
    q = PairQueue(store, gen, ["a red circle", "a blue star"], size=2, seed=1,
                  reward_model=lambda: current["rm"], candidates=5)
    q.earlier_fraction = 0.0
    # no reward model yet: of the 5 seeds, the two images farthest apart in the standardised perceptual statistics
    from reward_model.perceptual import perceptual_features
    state = q.rng.getstate()
    plain = q.make_pair()
    assert store.counts()["samples"] == 2 and plain["a"] != plain["b"]
    replay = random.Random()
    replay.setstate(state)
    prompt = replay.choice(q.prompts)
    seeds = [replay.randrange(2**31) for _ in range(5)]
    f = perceptual_features(gen.generate([prompt] * 5, seeds)[0]).double().numpy()
    z = (f - f.mean(0)) / (f.std(0, ddof=1) + 1e-6)
    d = {(seeds[i], seeds[j]): float(((z[i] - z[j]) ** 2).sum()) for i in range(5) for j in range(i + 1, 5)}
    shown = tuple(sorted((store.get_sample(plain[k])["seed"] for k in ("a", "b")), key=seeds.index))
    assert plain["prompt"] == prompt and d[shown] >= max(d.values()) * (1 - 1e-4), (shown, d)
    assert d[shown] > sorted(d.values())[-2] * 1.001  # a clear winner, not a near-tie the test can't tell
    current["rm"] = rm
    for _ in range(3):
        before = {s["id"] for s in store.samples()}
        state = q.rng.getstate()
        pair = q.make_pair()
        assert {s["id"] for s in store.samples()} - before == {pair["a"], pair["b"]}  # only the shown pair is kept
        replay = random.Random()
        replay.setstate(state)  # the queue draws the prompt, then the candidate seeds
        prompt = replay.choice(q.prompts)
        seeds = [replay.randrange(2**31) for _ in range(5)]
        images, _ = gen.generate([prompt] * 5, seeds)
        r = rm.head_scores_for(images, [prompt] * 5)
        u = {}
        for i in range(5):
            for j in range(i + 1, 5):
                p, spread = rm.pair_probability(r[:, i:i + 1], r[:, j:j + 1])
                u[(seeds[i], seeds[j])] = float(1 - (2 * p - 1).abs() + spread)
        shown = tuple(sorted((store.get_sample(pair[k])["seed"] for k in ("a", "b")), key=seeds.index))
        assert pair["prompt"] == prompt and u[shown] >= max(u.values()) - 1e-6, (shown, u)
    assert len({round(v, 6) for v in u.values()}) > 1  # the choice was not a tie among equals


def test_ab_pairs_show_the_draw_where_the_two_versions_differ_most(tmp_path):
    """An A/B pair is the candidate and the served version on one prompt and seed: of the queue's draws, the
    one whose two images differ most (checked by rendering every draw again); only the shown two are stored."""
    from feedback import FeedbackStore
    from studio.serving import PairQueue

    lcm_pipeline("tiny").save_pretrained(tmp_path / "model")
    lora = random_lcm_lora(lcm_pipeline("tiny"), tmp_path / "lora", rank=4, seed=1)
    gen = ServedGenerator(StudioSettings(model=str(tmp_path / "model"), steps=2, data_dir=tmp_path / "d"))
    gen.set_candidate("round-1", lora)
    store = FeedbackStore(tmp_path / "live")
    prompts = ["a red circle", "a blue star", "a large green square", "a small yellow triangle"]
    q = PairQueue(store, gen, prompts, size=2, seed=3, candidates=2, ab_fraction=1.0, ab_draws=5)
    picked_not_first = 0
    for _ in range(4):
        before = {s["id"] for s in store.samples()}
        replay = random.Random()
        replay.setstate(q.rng.getstate())
        pair = q.make_ab_pair()
        draws = [replay.choice(prompts) for _ in range(5)]
        seeds = [replay.randrange(2**31) for _ in range(5)]
        cand = gen.generate(draws, seeds, version="round-1")[0]
        served = gen.generate(draws, seeds)[0]
        diff = [np.abs(np.asarray(c, np.float32) - np.asarray(s, np.float32)).mean() for c, s in zip(cand, served)]
        shown = {store.get_sample(pair[k])["generator"]: store.get_sample(pair[k]) for k in ("a", "b")}
        assert set(shown) == {"round-1", "base"} and pair["ab"] == "round-1"
        k = int(np.argmax(diff))
        assert {(s["prompt"], s["seed"]) for s in shown.values()} == {(draws[k], seeds[k])}, (diff, shown)
        assert {s["id"] for s in store.samples()} - before == {pair["a"], pair["b"]}
        picked_not_first += k != 0
    assert picked_not_first  # the choice mattered: not always the first draw
    one = PairQueue(store, gen, prompts, size=2, seed=4, ab_fraction=1.0, ab_draws=1)
    replay = random.Random()
    replay.setstate(one.rng.getstate())
    pair = one.make_ab_pair()
    first = (replay.choice(prompts), replay.randrange(2**31))  # one draw: shown as drawn, no choice
    assert {(store.get_sample(pair[k])["prompt"], store.get_sample(pair[k])["seed"]) for k in ("a", "b")} == {first}


def test_a_dry_queue_hands_over_a_two_image_pair_at_once(tmp_path):
    """When the queue ran dry the caller waits for its pair: it costs two images, an A/B pair included (its
    vote is what the gate waits for), while the background worker's A/B pair renders both versions of every draw."""
    from feedback import FeedbackStore
    from studio.serving import PairQueue

    lcm_pipeline("tiny").save_pretrained(tmp_path / "model")
    lora = random_lcm_lora(lcm_pipeline("tiny"), tmp_path / "lora", rank=4, seed=1)
    gen = ServedGenerator(StudioSettings(model=str(tmp_path / "model"), steps=2, data_dir=tmp_path / "d"))
    gen.set_candidate("round-1", lora)
    rendered = []
    generate = gen.generate

    def counting(prompts, seeds, version=None):
        rendered.append(len(prompts))
        return generate(prompts, seeds, version)

    gen.generate = counting
    q = PairQueue(FeedbackStore(tmp_path / "live"), gen, ["a red circle", "a blue star"], size=2, seed=0,
                  ab_fraction=1.0, ab_draws=4)  # never started: every get() finds the queue empty
    pair = q.get()
    assert pair.get("ab") == "round-1" and sum(rendered) == 2, rendered
    rendered.clear()
    assert q.make_pair().get("ab") == "round-1" and sum(rendered) == 8, rendered
    gen.set_candidate(None)
    rendered.clear()
    assert "ab" not in q.get() and sum(rendered) == 2


def test_earlier_version_pairs_never_show_the_candidate(tmp_path):
    """An earlier-version pair pits the served version's new sample against an older version's sample of the
    prompt, never against the pending candidate's: a vote on that would be a candidate-vs-served vote on two seeds."""
    from PIL import Image

    from feedback import FeedbackStore
    from studio.serving import PairQueue

    lcm_pipeline("tiny").save_pretrained(tmp_path / "model")
    lora = random_lcm_lora(lcm_pipeline("tiny"), tmp_path / "lora", rank=4, seed=1)
    gen = ServedGenerator(StudioSettings(model=str(tmp_path / "model"), steps=2, data_dir=tmp_path / "d"))
    gen.set_candidate("round-2", lora)
    store = FeedbackStore(tmp_path / "live")
    prompt = "a red circle"
    q = PairQueue(store, gen, [prompt], size=2, seed=0, candidates=2, ab_fraction=1.0, ab_draws=1)
    assert q.make_pair().get("ab") == "round-2"  # the candidate's sample of the prompt is in the store now
    q.ab_fraction, q.earlier_fraction = 0.0, 1.0
    for _ in range(3):
        pair = q.make_pair()
        shown = {store.get_sample(pair[k])["generator"] for k in ("a", "b")}
        assert shown == {"base"}, shown  # no older version yet: two served samples
    older = store.add_sample(Image.new("RGB", (32, 32), (200, 40, 40)), prompt, 7, 2, 8.0, generator="round-1")
    for _ in range(3):
        pair = q.make_pair()
        assert {store.get_sample(pair[k])["generator"] for k in ("a", "b")} == {"base", "round-1"}
        assert older in (pair["a"], pair["b"])
