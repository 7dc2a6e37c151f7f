"""The JSON API (gradio_client, load tests): endpoints without a page of their own.

Every handler checks its caller itself: votes and undos need the name's rater_token, the rest of what
changes state needs the admin password.
"""

from __future__ import annotations

import uuid

import gradio as gr

from .common import user_errors, username


def build(studio) -> None:
    @gr.api(api_name="next_pair")
    def next_pair() -> dict:
        """A pair to rate: prompt, sample ids a/b, and a fresh client_id to submit with."""
        p = studio.next_pair()
        return {"prompt": p["prompt"], "a": p["a"], "b": p["b"], "client_id": str(uuid.uuid4())}

    @gr.api(api_name="vote")
    @user_errors
    def vote(rater: str, sample_a: str, sample_b: str, choice: str, client_id: str, rater_token: str | None = None,
             profile: gr.OAuthProfile | None = None) -> dict:
        """Record a judgement (choice: a, b, tie, skip). The first vote under a new name returns its secret
        rater_token; every later vote or undo under that name must send it. A retried client_id is recorded once."""
        row = studio.vote(studio.rater(rater, rater_token, username(profile)), sample_a, sample_b, choice, client_id)
        return {"id": row["id"], "created": row["created"], "rater_token": row.get("rater_token")}

    @gr.api(api_name="undo_vote")
    @user_errors
    def undo_vote(rater: str, rater_token: str | None = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Retract your own latest vote (needs the name's rater_token)."""
        row = studio.undo(studio.rater(rater, rater_token, username(profile)))
        return {"undone": row["id"] if row else None}

    @gr.api(api_name="status")
    def status() -> dict:
        """Counts, the served version, the candidate on trial, queue depth and the current round's progress."""
        return studio.public_status()

    @gr.api(api_name="import_preferences")
    @user_errors
    def import_preferences(password: str, path: str, profile: gr.OAuthProfile | None = None) -> dict:
        studio.check_admin(password, username(profile))
        return studio.import_data(path)

    @gr.api(api_name="generate")
    @user_errors
    def generate(password: str, prompt: str, seed: int, profile: gr.OAuthProfile | None = None) -> dict:
        """Generate one image with the served model (admin); returns the stored sample id."""
        studio.check_admin(password, username(profile))
        return studio.generate(prompt, seed)
