"""Share tab: the served LoRA as a diffusers folder with a card, and pushes of the reward model, the LoRA and the
preference data to the Hugging Face Hub (admin, with HF_TOKEN)."""

from __future__ import annotations

import gradio as gr

from .common import user_errors


def build(studio, password: gr.Textbox, admin) -> None:
    def export(password_: str, version: str | None, profile: gr.OAuthProfile | None = None):
        admin(password_, profile)  # it writes a folder and a zip
        return str(studio.export_lora(version or None))

    def push(what: str):
        def run(password_: str, repo_id: str, profile: gr.OAuthProfile | None = None) -> str:
            admin(password_, profile)
            return f"pushed: {studio.push(what, (repo_id or '').strip())}"

        run.__name__ = f"push_{what}"
        return user_errors(run)

    gr.Markdown("Use them elsewhere: `pipe.load_lora_weights(dir or repo)`, `reward_model.load(dir, zip or repo)`, "
                "`datasets.load_dataset(repo)` (see the README).")
    with gr.Row():
        version = gr.Textbox(label="LoRA of version (empty: the served one)", placeholder="round-N")
        b_lora = gr.Button("Export LoRA (admin; diffusers folder + card, zip)", elem_id="btn-export-lora")
    lora_file = gr.File(label="LoRA download")
    b_lora.click(user_errors(export), [password, version], [lora_file], api_visibility="private")
    for what, label in (("reward_model", "reward model"), ("lora", "served LoRA"), ("dataset", "preference data")):
        with gr.Row():
            repo = gr.Textbox(label=f"Hub repo for the {label}", placeholder="user/name", scale=3)
            b = gr.Button(f"Push {label} (admin, HF_TOKEN)", scale=1, elem_id=f"btn-push-{what}")
        done = gr.Markdown()
        b.click(push(what), [password, repo], [done], api_visibility="private")
