"""The toy models' card is generated: the committed README.md is what its stored inputs and notes produce."""

from __future__ import annotations

import json
from pathlib import Path

from rlcm.toy.build import BuildConfig
from rlcm.toy.card import card_text, regenerate, write_card

from .conftest import MODELS


def test_committed_card_is_regenerated_from_its_inputs_and_notes():
    """Edit NOTES.md or rerun `--stages card`, never README.md by hand (no evaluation reruns here)."""
    assert (MODELS / "README.md").read_text() == regenerate(MODELS)


def test_card_follows_its_inputs(tmp_path):
    inputs = json.loads((MODELS / "card.json").read_text())
    inputs["rows"][0][1]["shape"] = 0.123
    inputs["clip_retrieval"] = 0.5
    text = card_text(inputs, "a note")
    assert f"| {inputs['rows'][0][0]} | " in text and "| 12.3% |" in text
    assert "on 50.0% of held-out renders" in text and text.rstrip().endswith("a note")
    assert "## Notes" not in card_text(inputs, "")


def test_write_card_stores_what_regenerate_reads(tmp_path):
    cfg = BuildConfig(out=tmp_path / "out", work=tmp_path / "work", card_prompts=8)
    cfg.out.mkdir()
    (cfg.out / "NOTES.md").write_text("kept by hand\n")
    rows = [("LCM, 4 steps", {"bg_color": 1.0, "color": 0.5, "shape": 0.25, "size": 0.75, "all_correct": 0.125,
                              "seconds_per_image": 0.01})]
    write_card(cfg, rows, 0.875)
    text = (cfg.out / "README.md").read_text()
    assert text == regenerate(Path(cfg.out))
    assert "| LCM, 4 steps | 100.0% | 50.0% | 25.0% | 75.0% | 12.5% | 0.010 |" in text and "kept by hand" in text
