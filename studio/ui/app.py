"""The whole app: a header (name, admin password, sign-in on a Space), one builder per tab, the JSON API."""

from __future__ import annotations

import gradio as gr

from . import api, compare, data, rate, reward, settings_tab, share, train
from .common import CSS, HOTKEYS, username

# Gradio copies every image and file a handler returns into its cache (each pair shown adds two files there):
# every 60 s, copies older than 10 minutes are deleted, so the cache holds what was shown lately, not everything
CACHE_SWEEP = (60, 600)


def build_app(studio) -> gr.Blocks:
    def admin(password: str, profile: gr.OAuthProfile | None = None) -> str:
        return studio.check_admin(password, username(profile))

    with gr.Blocks(title="RLCM Studio", delete_cache=CACHE_SWEEP) as demo:
        gr.Markdown("# RLCM Studio\nRate pairs · fit a reward model · fine-tune the consistency model live")
        with gr.Row():
            name = gr.Textbox(label="your name", placeholder="who is rating", elem_id="rater-name", scale=2,
                              visible=not studio.settings.on_space)
            password = gr.Textbox(label="admin password", type="password", elem_id="admin-pw", scale=1)
            if studio.settings.on_space:
                gr.LoginButton()
        with gr.Tabs():
            with gr.Tab("Rate", id="rate"):
                rating = rate.build(studio, name)
            with gr.Tab("Train", id="train"):
                train.build(studio, password, admin)
            with gr.Tab("Compare", id="compare"):
                compare.build(studio)
            with gr.Tab("Reward model", id="reward"):
                reward.build(studio, password, admin)
            with gr.Tab("Data", id="data"):
                data.build(studio, password, admin)
            with gr.Tab("Share", id="share"):
                share.build(studio, password, admin)
            with gr.Tab("Settings", id="settings"):
                settings_tab.build(studio, password, admin)
        demo.load(*rating["first_pair"], api_visibility="private")
        api.build(studio)
    return demo


def launch_kwargs(settings=None) -> dict:
    """`launch()` arguments: hotkeys and CSS; with the studio's settings, the upload cap and its data folder
    (images are served from there, also when it lies outside the working directory)."""
    kw = {"head": HOTKEYS, "css": CSS, "theme": gr.themes.Soft()}
    if settings is not None:
        kw.update(max_file_size=settings.max_upload_bytes, allowed_paths=[str(settings.data_dir)])
    return kw
