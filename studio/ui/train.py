"""Train tab: start or cancel a round (admin), live progress with elapsed time and ETA, the candidate's trial,
round history, and which version is served (promote or roll back)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from rlcm.plot import reward_figure

from .common import user_errors

CURVE = "training reward: reward-model score + guard x CLIP prompt score"


def build(studio, password: gr.Textbox, admin) -> gr.Timer:
    def start(password: str, force: bool, profile: gr.OAuthProfile | None = None) -> str:
        who = admin(password, profile)
        return f"round {studio.start_round(by=who, force=bool(force))} started"

    def cancel(password: str, profile: gr.OAuthProfile | None = None) -> str:
        admin(password, profile)
        return "cancelling…" if studio.cancel_round() else "no round is running"

    def activate(password: str, version: str, profile: gr.OAuthProfile | None = None) -> str:
        who = admin(password, profile)
        return f"serving **{studio.activate(version, by=who)}**"

    def reject(password: str, profile: gr.OAuthProfile | None = None) -> str:
        who = admin(password, profile)
        cand = studio.generator.candidate
        if cand is None:
            raise ValueError("no candidate on trial")
        studio.reject(cand, f"rejected by {who}")
        return f"**{cand}** rejected"

    def refresh(selected: str | None, drawn: int, listed: list[str]):
        text, history, rows = studio.train_view()
        choices = studio.versions()
        # the timer never sends the picker a value while the selection is valid: `selected` was read when the tick
        # started, and sending it back would undo a choice made while the tick ran
        if choices == listed:
            picker = gr.skip()
        elif selected in choices:
            picker = gr.update(choices=choices)
        else:
            picker = gr.update(choices=choices, value=studio.generator.version)
        fig = reward_figure(rows, CURVE, (7, 2.8)) if len(rows) != drawn else gr.skip()
        return text, fig, pd.DataFrame(history), picker, len(rows), choices

    with gr.Row():
        b_start = gr.Button("Start fine-tune round", variant="primary", elem_id="btn-start-round")
        force = gr.Checkbox(label="start even if the reward model is no better than chance", value=False,
                            elem_id="force-round")
        b_cancel = gr.Button("Cancel round", elem_id="btn-cancel-round")
    train_md = gr.Markdown("idle", elem_id="train-status")
    curve = gr.Plot(reward_figure([], CURVE, (7, 2.8)), label=CURVE, elem_id="reward-curve")
    history = gr.Dataframe(label="rounds", interactive=False, elem_id="round-history")
    with gr.Row():
        version = gr.Dropdown(label="serve version (promote a candidate, or roll back)", choices=studio.versions(),
                              value=studio.generator.version, elem_id="version-select",
                              allow_custom_value=True)  # the handler checks the version itself
        b_activate = gr.Button("Make active (admin)", elem_id="btn-activate")
        b_reject = gr.Button("Reject candidate (admin)", elem_id="btn-reject")
    action_md = gr.Markdown(elem_id="train-action")
    drawn = gr.State(-1)  # reward-curve rows drawn so far
    listed = gr.State(studio.versions())  # the picker's choices as last sent

    b_start.click(user_errors(start), [password, force], [action_md], api_name="start_round")
    b_cancel.click(user_errors(cancel), [password], [action_md], api_name="cancel_round")
    b_activate.click(user_errors(activate), [password, version], [action_md], api_name="activate")
    b_reject.click(user_errors(reject), [password], [action_md], api_name="reject_candidate")
    timer = gr.Timer(1.0)
    timer.tick(refresh, [version, drawn, listed], [train_md, curve, history, version, drawn, listed],
               api_visibility="private",
               show_progress="hidden")
    return timer
