"""Rate tab: a prompt, two samples, keys 1/2/3/space/u; an undone pair comes back."""

from __future__ import annotations

import uuid

import gradio as gr

from .common import user_errors, username


def build(studio, name: gr.Textbox) -> dict:
    def show(pair: dict, rater: str | None):
        pair["client_id"] = str(uuid.uuid4())
        return pair["image_a"], pair["image_b"], f"### {pair['prompt']}", pair, studio.counts_line(rater)

    def first_pair(name_: str, profile: gr.OAuthProfile | None = None):
        return show(studio.next_pair(), studio.rater_name(name_, username(profile)) if (name_ or profile) else None)

    def vote(choice: str):
        def cast(name_: str, pair: dict, profile: gr.OAuthProfile | None = None):
            rater = studio.rater_name(name_, username(profile))
            if not pair:
                raise ValueError("no pair shown yet")
            studio.vote(rater, pair["a"], pair["b"], choice, pair["client_id"])
            return show(studio.next_pair(), rater)

        cast.__name__ = f"vote_{choice}"
        return user_errors(cast)

    def undo(name_: str, profile: gr.OAuthProfile | None = None):
        rater = studio.rater_name(name_, username(profile))
        row = studio.undo(rater)
        if row is None:
            gr.Info("nothing to undo")
            return (gr.skip(),) * 4 + (studio.counts_line(rater),)
        gr.Info("undone: your last vote; here is that pair again")
        return show(studio.undone_pair(row), rater)

    prompt_md = gr.Markdown(elem_id="pair-prompt")
    with gr.Row(elem_id="pair-row"):
        img_a = gr.Image(label="left", type="filepath", interactive=False, height=448, elem_id="img-left")
        img_b = gr.Image(label="right", type="filepath", interactive=False, height=448, elem_id="img-right")
    with gr.Row():
        b_left = gr.Button("Left is better (1)", variant="primary", elem_id="btn-left")
        b_right = gr.Button("Right is better (2)", variant="primary", elem_id="btn-right")
        b_tie = gr.Button("Tie (3)", elem_id="btn-tie")
        b_skip = gr.Button("Skip (space)", elem_id="btn-skip")
        b_undo = gr.Button("Undo (u)", elem_id="btn-undo")
    counts_md = gr.Markdown(elem_id="rate-counts")
    gr.Markdown("keys: 1 left · 2 right · 3 tie · space skip · u undo", elem_classes="keys")
    pair = gr.State({})

    out = [img_a, img_b, prompt_md, pair, counts_md]
    for btn, choice in ((b_left, "a"), (b_right, "b"), (b_tie, "tie"), (b_skip, "skip")):
        btn.click(vote(choice), [name, pair], out, api_visibility="private")
    b_undo.click(user_errors(undo), [name], out, api_visibility="private")
    return {"first_pair": user_errors(first_pair), "outputs": out}
