"""Pushing each artefact to its Hub repo type, against a local fake of HfApi that checks files and repo types."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from safetensors.torch import save_file

from feedback import FeedbackStore
from studio import hub
from tests.fixtures_rm import fill_store
from tests.hub_fake import FakeHfApi


@pytest.fixture
def rm_dir(tmp_path):
    """A folder with the files of an exported reward model (contents are reward_model's business, tested there)."""
    d = tmp_path / "rm"
    d.mkdir()
    for name in ("model.safetensors", "config.json", "README.md"):
        (d / name).write_bytes(name.encode())
    (d / "stray.txt").write_text("not pushed")
    return d


@pytest.fixture
def prefs(tmp_path):
    with FeedbackStore(tmp_path / "fb") as store:
        fill_store(store, n_prompts=2, n_seeds=3)
        for i in range(3):
            x, y = store.next_pair("alice", rng=i)
            store.record_comparison(x["id"], y["id"], "ab"[i % 2], "alice", f"c{i}")
        yield store.export_parquet(tmp_path / "prefs.parquet")


def test_each_artefact_goes_to_its_repo_type_with_its_files(rm_dir, prefs, tmp_path):
    import torch

    api = FakeHfApi(cache=tmp_path / "cache")
    hub.push_reward_model(rm_dir, "me/rm", api=api)
    lora = tmp_path / "lora"
    lora.mkdir()
    save_file({"unet.x.lora_A.weight": torch.zeros(1)}, lora / "pytorch_lora_weights.safetensors")
    (lora / "README.md").write_text("card")
    hub.push_lora(lora, "me/lora", api=api)
    url = hub.push_dataset(prefs, "me/prefs", api=api)
    assert url.startswith("https://huggingface.co/me/prefs")
    assert {r: v["repo_type"] for r, v in api.repos.items()} == {"me/rm": "model", "me/lora": "model",
                                                                 "me/prefs": "dataset"}
    assert all(v["private"] for v in api.repos.values())  # private unless asked
    files = {c.repo_id: set(c.files) for c in api.commits}
    assert files == {"me/rm": {"model.safetensors", "config.json", "README.md"},
                     "me/lora": {"pytorch_lora_weights.safetensors", "README.md"},
                     "me/prefs": {"data/train-00000-of-00001.parquet", "README.md"}}
    assert len(api.commits) == 3  # one commit each
    snap = next((tmp_path / "cache" / "datasets--me--prefs" / "snapshots").iterdir())
    assert (snap / hub.DATA_FILE).read_bytes() == prefs.read_bytes()
    card = DatasetCard.load(snap / "README.md")
    assert card.data.configs[0]["data_files"][0] == {"split": "train", "path": "data/train-*.parquet"}
    assert "3 pairwise judgements" in card.text and card.data.size_categories == ["n<1K"]
    import datasets  # the pushed layout loads as the Hub's loader reads it

    ds = datasets.load_dataset("parquet", data_files=str(snap / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 3 and ds.column_names == pq.read_schema(prefs).names


def test_bad_input_changes_nothing_and_no_token_is_refused(rm_dir, tmp_path, monkeypatch):
    api = FakeHfApi()
    with pytest.raises(ValueError, match="user/name"):
        hub.push_reward_model(rm_dir, "no-slash", api=api)
    (rm_dir / "config.json").unlink()
    with pytest.raises(ValueError, match="lacks"):
        hub.push_reward_model(rm_dir, "me/rm", api=api)
    with pytest.raises(ValueError, match="lacks"):
        hub.push_lora(tmp_path, "me/lora", api=api)
    with pytest.raises(ValueError, match="lacks"):
        hub.push_dataset(tmp_path / "missing.parquet", "me/prefs", api=api)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        hub.push_dataset(broken, "me/prefs", api=api)
    assert api.repos == {} and api.commits == []
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (rm_dir / "config.json").write_text(json.dumps({}))
    with pytest.raises(PermissionError, match="HF_TOKEN"):
        hub.push_reward_model(rm_dir, "me/rm")


def test_a_repo_of_another_type_is_refused(prefs, rm_dir):
    api = FakeHfApi()
    hub.push_dataset(prefs, "me/thing", api=api)
    with pytest.raises(ValueError, match="exists as a dataset repo"):
        hub.push_reward_model(rm_dir, "me/thing", api=api)
