"""Reward model tab: held-out accuracy with its interval and n, what it likes most and least, export, import."""

from __future__ import annotations

import gradio as gr

from studio import views

from .common import user_errors


def build(studio, password: gr.Textbox, admin) -> None:
    def view():
        info = studio.reward_model_info()
        best, worst = studio.liked_most_and_least()
        return views.reward_model_summary(info), best, worst, info.get("zip")

    def fit(password_: str, profile: gr.OAuthProfile | None = None):
        admin(password_, profile)
        studio.fit_reward_model()
        return view()

    def upload(password_: str, file, profile: gr.OAuthProfile | None = None):
        admin(password_, profile)
        if not file:
            raise ValueError("choose an exported reward model (.zip) first")
        studio.import_reward_model(file)
        return view()

    with gr.Row():
        b_refresh = gr.Button("Refresh", elem_id="btn-rm-refresh")
        b_fit = gr.Button("Fit now (admin)", elem_id="btn-fit")
    summary = gr.Markdown(elem_id="rm-metrics")
    liked = gr.Gallery(label="liked most (recent samples)", columns=4, height="auto")
    disliked = gr.Gallery(label="liked least", columns=4, height="auto")
    rm_zip = gr.File(label="export (zip: model.safetensors, config.json, README.md)")
    rm_upload = gr.File(label="import an exported reward model (.zip)", file_types=[".zip"])
    b_import = gr.Button("Import (admin)", elem_id="btn-rm-import")
    out = [summary, liked, disliked, rm_zip]
    b_refresh.click(user_errors(view), None, out, api_visibility="private")
    b_fit.click(user_errors(fit), [password], out, api_name="fit_reward_model")
    b_import.click(user_errors(upload), [password, rm_upload], out, api_visibility="private")
