"""Reward model: cached embeddings, fitting a consistent rater, export/load round trip, refused files, CLI."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

import reward_model as rm
from feedback import FeedbackStore, simulate
from feedback.raters import warm_colours
from feedback.pairs import PairPolicy, pair_key
from reward_model.__main__ import main as cli
from tests.fixtures_rm import clip, clip_dir, fill_store, labelled_pairs, render, toy_clip_present  # noqa: F401

FAST = rm.FitConfig(ensemble_size=3, max_epochs=150, patience=20)


@pytest.fixture(scope="module")
def warm_data():
    """300 training pairs over 160 renders and 200 evaluation pairs over 100 other renders, by warm_colours."""
    return labelled_pairs(warm_colours, 300, pool=160, seed=1), labelled_pairs(warm_colours, 200, pool=100, seed=2)


@pytest.fixture(scope="module")
def fitted(clip, warm_data):  # noqa: F811
    return rm.fit(warm_data[0], clip, rm.FitConfig(seed=0))


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb") as s:
        fill_store(s, n_prompts=4, n_seeds=5)  # 40 pairs
        simulate(s, warm_colours, 30, "sim")
        yield s


def test_embedding_cache_persists_and_skips_the_backbone(clip, store, monkeypatch):  # noqa: F811
    calls = []
    real = clip.embed_images
    monkeypatch.setattr(clip, "embed_images", lambda ims: calls.append(len(ims)) or real(ims))
    ids = [s["id"] for s in store.samples()][:7]
    first = rm.EmbeddingCache(clip, store.data_dir).images(ids, store.load_image)
    assert sum(calls) == 7 and first.shape == (7, clip.embed_dim)
    assert torch.allclose(first.norm(dim=1), torch.ones(7), atol=1e-5)
    again = rm.EmbeddingCache(clip, store.data_dir)  # a new process would see the same files
    assert torch.equal(again.images(ids, store.load_image), first) and sum(calls) == 7
    more = again.images(ids + [s["id"] for s in store.samples()][7:9], store.load_image)
    assert sum(calls) == 9 and torch.equal(more[:7], first)
    texts = again.texts(["a red circle", "a blue star", "a red circle"])
    assert torch.equal(texts[0], texts[2]) and not torch.equal(texts[0], texts[1])


def test_fit_learns_a_consistent_rater(clip, warm_data, fitted):  # noqa: F811
    model, metrics = fitted
    held = rm.evaluate(model, warm_data[1])  # 200 pairs of renders it never saw
    # With the trained toy CLIP the bar is the issue's; a random-weight CLIP still carries the mean colour
    # this taste depends on (measured about 0.93 here), so it must at least clear 0.8.
    bar = 0.85 if toy_clip_present() else 0.8
    assert held["accuracy"] >= bar, (held, metrics)
    assert metrics["accuracy"] >= bar - 0.1 and metrics["n_test"] + metrics["n_val"] + metrics["n_train"] == 300
    assert metrics["n_raters"] == 1 and metrics["log_loss"] < 0.69
    assert metrics["self_agreement"] is None and metrics["repeat_judgements"] == 0


def test_training_changes_parameters_and_ties_pull_rewards_together(clip, warm_data):  # noqa: F811
    from reward_model.fit import collect, train_head
    from reward_model.head import EnsembleHead

    cfg = rm.FitConfig(ensemble_size=2, max_epochs=200, patience=200)
    data = collect(warm_data[0][:40], rm.EmbeddingCache(clip))
    head, epochs = train_head(data, list(range(30)), list(range(30, 40)), cfg)
    init = EnsembleHead(clip.embed_dim, cfg.hidden, 2, seed=cfg.seed)
    assert not torch.equal(init.w1, head.w1) and not torch.equal(init.b2, head.b2) and min(epochs) >= 1
    ties = collect([dict(p, choice="tie") for p in warm_data[0][:40]], rm.EmbeddingCache(clip))
    tie_head, _ = train_head(ties, list(range(30)), list(range(30, 40)), cfg)
    gap = lambda h, d: (h(d.img, d.txt)[:, d.a] - h(d.img, d.txt)[:, d.b]).abs().mean()  # noqa: E731
    assert gap(tie_head, ties) < 0.5 * gap(head, data)  # all-tie labels (y = 1/2) pull rewards together


def test_self_agreement_on_repeated_pairs(clip, warm_data):  # noqa: F811
    base = warm_data[0][:20]
    swapped = [dict(p, image_a=p["image_b"], image_b=p["image_a"],
                    choice={"a": "b", "b": "a", "tie": "tie"}[p["choice"]]) for p in base[:10]]
    flipped = [dict(p, choice={"a": "b", "b": "a", "tie": "a"}[p["choice"]]) for p in base[10:14]]
    metrics = rm.fit(base + swapped + flipped, clip, FAST)[1]
    assert metrics["repeat_judgements"] == 14 and metrics["self_agreement"] == pytest.approx(10 / 14)


def test_export_reloads_from_dir_and_zip_and_scores_identically(fitted, clip, tmp_path):  # noqa: F811
    model, metrics = fitted
    d, z = rm.export(model, tmp_path / "rm-1", metrics)
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "config.json", "README.md"} and z.is_file()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["embed_dim"] == clip.embed_dim and cfg["ensemble_size"] == 4 and cfg["backbone"]["fingerprint"]
    assert "held-out pairwise accuracy" in (d / "README.md").read_text()
    images = [render(i) for i in range(900, 906)]
    prompts = ["a red circle", "a blue square", "a red circle", "a star", "a star", "a green triangle"]
    want = model.score(images, prompts)
    for path in (d, z):
        loaded = rm.load(path, clip=clip)
        assert torch.equal(loaded.score(images, prompts), want)
        assert torch.equal(loaded.uncertainty(images, prompts), model.uncertainty(images, prompts))
        assert loaded.version == model.version and loaded.metrics["accuracy"] == metrics["accuracy"]
    assert torch.equal(rm.load(z).score(images, prompts), want)  # backbone from config.json's source
    assert want.shape == (6,) and model.uncertainty(images, prompts).min() >= 0


def _rewrite(zip_path, out, config=None, weights=None):
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json" and config is not None:
                data = json.dumps(config(json.loads(data))).encode()
            if name == "model.safetensors" and weights is not None:
                data = weights
            dst.writestr(name, data)
    return out


def test_load_refuses_broken_or_mismatched_files(fitted, clip, tmp_path):  # noqa: F811
    import io

    _, z = rm.export(fitted[0], tmp_path / "rm", fitted[1])
    drop = lambda key: lambda c: {k: v for k, v in c.items() if k != key}  # noqa: E731
    buf = io.BytesIO()
    torch.save({"w1": torch.zeros(1)}, buf)  # a pickle in disguise
    cases = {
        "lacks 'hidden'": dict(config=drop("hidden")),
        "format": dict(config=lambda c: {**c, "format_version": 99}),
        "does not match config.json": dict(config=lambda c: {**c, "hidden": c["hidden"] + 1}),
        "backbone mismatch": dict(config=lambda c: {**c, "backbone": {**c["backbone"], "fingerprint": "0" * 16}}),
        "does not load": dict(weights=buf.getvalue()),
    }
    for msg, edit in cases.items():
        bad = _rewrite(z, tmp_path / f"bad-{len(msg)}.zip", **edit)
        with pytest.raises(ValueError, match=msg):
            rm.load(bad, clip=clip)
    with pytest.raises(ValueError, match="neither"):
        rm.load(tmp_path / "nothing-here")


def test_pair_uncertainty_steers_next_pair(clip, store):  # noqa: F811
    model, metrics = rm.fit(store, clip, FAST)
    assert metrics["n_pairs"] == 30
    u = model.pair_uncertainty(store)
    open_pairs = []
    samples = store.samples()
    judged = store.judged_pairs("sim")
    for i, a in enumerate(samples):
        for b in samples[i + 1:]:
            if a["prompt"] == b["prompt"] and pair_key(a["id"], b["id"]) not in judged:
                open_pairs.append((a["id"], b["id"]))
    scores = dict(zip(map(lambda p: pair_key(*p), open_pairs), u(open_pairs)))
    assert all(0 <= s <= 1.5 for s in scores.values())
    x, y = store.next_pair("sim", uncertainty=u, rng=0, policy=PairPolicy(max_candidates=100))
    assert scores[pair_key(x["id"], y["id"])] == pytest.approx(max(scores.values()))


def test_accuracy_curve(clip, warm_data):  # noqa: F811
    curve = rm.accuracy_curve(warm_data[0][:120], clip, sizes=(30, 120, 500), config=FAST, eval_pairs=warm_data[1][:80])
    assert [c["n_labels"] for c in curve] == [30, 120, 500] and curve[2]["accuracy"] is None
    assert curve[1]["n_eval"] == 80 and curve[1]["accuracy"] > 0.6


def test_cli_fit_eval_export(store, clip_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "rm-cli"
    assert cli(["fit", "--db", str(store.data_dir), "--clip", str(clip_dir), "--out", str(out), "--ensemble", "2"]) == 0
    fit_out = json.loads(capsys.readouterr().out)
    assert fit_out["metrics"]["n_pairs"] == 30 and (tmp_path / "rm-cli.zip").is_file()
    assert cli(["eval", "--model", str(out), "--db", str(store.data_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 30
    assert cli(["export", "--model", str(tmp_path / "rm-cli.zip"), "--out", str(tmp_path / "copy")]) == 0
    from safetensors.torch import load_file

    copied, original = load_file(tmp_path / "copy" / "model.safetensors"), load_file(out / "model.safetensors")
    assert copied.keys() == original.keys() and all(torch.equal(copied[k], original[k]) for k in copied)
    assert cli(["fit", "--db", str(tmp_path / "empty"), "--clip", str(clip_dir), "--out", str(tmp_path / "x")]) == 2
    assert "at least" in capsys.readouterr().err


def test_tower_features_widen_the_image_input_and_travel_with_the_export(clip, warm_data, tmp_path):  # noqa: F811
    """The default image features append the tower's pooled activations to the embedding; an export records the
    kind, a reload scores identically, and a cache of the other kind is refused."""
    both = clip.image_features([warm_data[1][0]["image_a"]], "embedding+tower")
    emb = clip.image_features([warm_data[1][0]["image_a"]], "embedding")
    assert both.shape[1] > emb.shape[1] and torch.allclose(both[:, : emb.shape[1]], emb)
    with pytest.raises(ValueError, match="image features"):
        clip.image_features([warm_data[1][0]["image_a"]], "pixels")
    plain, _ = rm.fit(warm_data[0][:120], clip, rm.FitConfig(image_features="embedding", max_epochs=60))
    tower, _ = rm.fit(warm_data[0][:120], clip, rm.FitConfig(max_epochs=60))
    assert plain.config.image_dim == clip.embed_dim < tower.config.image_dim
    d, _ = rm.export(tower, tmp_path / "rm")
    again = rm.load(d, clip=clip)
    assert again.config.image_features == "embedding+tower"
    imgs = [p["image_a"] for p in warm_data[1][:6]]
    prompts = [p["prompt"] for p in warm_data[1][:6]]
    assert torch.allclose(again.score(imgs, prompts), tower.score(imgs, prompts), atol=1e-6)
    with pytest.raises(ValueError, match="cache holds"):
        rm.fit(warm_data[0][:40], clip, rm.FitConfig(), cache=rm.EmbeddingCache(clip))
