"""The JSON API (gradio_client, load tests): endpoints without a page of their own."""

from __future__ import annotations

import uuid

import gradio as gr

from .common import user_errors


def build(studio) -> None:
    @gr.api(api_name="next_pair")
    def next_pair() -> dict:
        """A pair to rate: prompt, sample ids a/b, and a fresh client_id to submit with."""
        p = studio.next_pair()
        return {"prompt": p["prompt"], "a": p["a"], "b": p["b"], "version": p["version"],
                "client_id": str(uuid.uuid4())}

    @gr.api(api_name="vote")
    @user_errors
    def vote(rater: str, sample_a: str, sample_b: str, choice: str, client_id: str) -> dict:
        """Record a judgement (choice: a, b, tie, skip); a retried client_id is recorded once."""
        row = studio.vote(studio.rater_name(rater), sample_a, sample_b, choice, client_id)
        return {"id": row["id"], "created": row["created"]}

    @gr.api(api_name="undo_vote")
    @user_errors
    def undo_vote(rater: str) -> dict:
        row = studio.undo(studio.rater_name(rater))
        return {"undone": row["id"] if row else None}

    @gr.api(api_name="status")
    def status() -> dict:
        """Counts, the served version, the candidate on trial, queue depth and the current round's progress."""
        st = studio.status()
        st["round"] = {k: v for k, v in st["round"].items() if k != "trace"}
        return st

    @gr.api(api_name="import_preferences")
    @user_errors
    def import_preferences(password: str, path: str) -> dict:
        studio.check_admin(password)
        return studio.import_data(path)

    @gr.api(api_name="generate")
    @user_errors
    def generate(prompt: str, seed: int) -> dict:
        """Generate one image with the served model; returns the stored sample id."""
        return studio.generate(prompt, seed)
