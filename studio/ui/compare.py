"""Compare tab: the versions leaderboard from people's votes beside the reward model's scores, and the fixed
held-out prompts rendered by every version."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from studio import views

from .common import user_errors


def build(studio) -> None:
    def refresh():
        rows = studio.compare()
        gallery = [(img, f"{r['version']} · {p}") for r in rows for img, p in zip(r["images"], r["prompts"])]
        scores = [{"version": r["version"], "reward-model score": "–" if r.get("reward") is None else f"{r['reward']:.2f}",
                   "toy prompt fidelity": views.pct(r.get("fidelity"), 1)} for r in rows]
        return pd.DataFrame(views.leaderboard_rows(studio.leaderboard())), gallery, pd.DataFrame(scores)

    gr.Markdown("**Leaderboard**: Bradley–Terry strengths fitted to people's votes between versions (A/B pairs "
                "and cross-version pairs), shown as the win rate against the base with a 90% interval, beside the "
                "reward model's mean score on the fixed prompts. A version whose reward-model score rose while "
                f"people's win rate did not is flagged. A/B pairs show, of {studio.settings.ab_draws} draws, the "
                "prompt and seed where the two versions differ most, so these win rates describe the differences "
                "people can see rather than an average image.")
    b = gr.Button("Refresh", elem_id="btn-compare")
    board = gr.Dataframe(label="versions leaderboard", interactive=False, elem_id="leaderboard")
    table = gr.Dataframe(label="fixed prompts: reward-model score, toy prompt fidelity", interactive=False,
                         elem_id="compare-table")
    gallery = gr.Gallery(columns=8, height="auto", elem_id="compare-gallery")
    b.click(user_errors(refresh), None, [board, gallery, table], api_name="compare")
