"""A launched studio on the shipped toy models, for the app and browser tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import MODELS

PASSWORD = "s3cret-admin"
# valid values of save_settings' inputs after the password, in studio.settings.EDITABLE order
SETTINGS_ARGS = (3, 5.0, 2, 0, 0.1, 0.0, 0.5, 0.2)
# the tests' rounds: 2 epochs at a third of the default step size, evaluated on 16 prompts, so a round changes the
# images (the candidate differs from the base) while its fidelity stays within the keeper's 2 points on any thread
# count or pair order. No confirmation on new prompts: on a test-sized set (32 images, standard error ~2 points)
# it rejects such rounds at random; test_gate tests it with LoRAs far from the limit.
TEST_ROUNDS = dict(round_epochs=2, round_epochs_base_factor=1.0, round_lr=1e-3, round_eval_prompts=16,
                   confirm_prompts=0)
# the tests' queue: the fewest draws per pair (2 candidate pairs to pick the reward model's least certain from, one
# A/B draw instead of a search for the one where two versions differ most: test_serving tests both on the queue
# itself), so a studio's background queue renders 2-4 images a pair instead of 8 while its tests train rounds
TEST_QUEUE = dict(pair_candidates=2, ab_draws=1)


def launch_studio(tmp: Path, **overrides):
    if not (MODELS / "toy-lcm").exists() or not (MODELS / "toy-clip").exists():
        pytest.skip("toy models not built yet (python -m rlcm.toy.build)")
    from app import build_app, launch_kwargs
    from studio.runtime import Studio
    from studio.settings import StudioSettings

    defaults = dict(**TEST_ROUNDS, **TEST_QUEUE, round_prompts=4, queue_size=4, snapshot_every_s=0, compare_prompts=4,
                    auto_round_every=0)
    settings = StudioSettings(model=str(MODELS / "toy-lcm"), clip=str(MODELS / "toy-clip"), data_dir=tmp,
                              admin_password=PASSWORD, **{**defaults, **overrides})
    studio = Studio(settings)
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=8).launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(settings))
    return studio, demo


TOKENS: dict[str, str] = {}  # rater name -> rater_token, as a browser keeps it


def label_pairs(client, n: int, rater: str = "sim") -> None:
    """Label pairs through the API with a consistent simulated taste (warm colours)."""
    from feedback.raters import warm_colours

    for _ in range(n):
        p = client.predict(api_name="/next_pair")
        from PIL import Image

        st = client._studio  # the test's own handle, to read images as the browser would see them
        a, b = Image.open(st.store.image_path(p["a"])), Image.open(st.store.image_path(p["b"]))
        vote(client, rater, p["a"], p["b"], warm_colours(a, b, p["prompt"]), p["client_id"])


def vote(client, rater: str, a: str, b: str, choice: str, client_id: str) -> dict:
    """A vote through the API that keeps the name's rater_token like the browser does."""
    ack = client.predict(rater, a, b, choice, client_id, TOKENS.get(rater), api_name="/vote")
    TOKENS[rater] = ack["rater_token"] or TOKENS.get(rater)
    return ack
