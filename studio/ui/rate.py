"""Rate tab: a prompt, two samples, keys 1/2/3/space/u; an undone pair comes back.

The browser keeps each typed name's secret rater_token (gr.BrowserState): the first vote under a new name
claims it, and later votes and undos under that name present the token.
"""

from __future__ import annotations

import uuid

import gradio as gr

from .common import user_errors, username


def build(studio, name: gr.Textbox) -> dict:
    tokens = gr.BrowserState({}, storage_key="rlcm-rater-tokens")  # {typed name or "": [name, token]}

    def who(name_: str, kept: dict, profile: gr.OAuthProfile | None):
        """The rater, with the token (and, in open mode, the random name) this browser holds for `name_`."""
        kept = kept if isinstance(kept, dict) else {}
        key = (name_ or "").strip() if isinstance(name_, str) or name_ is None else None  # studio.rater refuses
        held = kept.get(key) if key is not None else None  # the browser's storage: anything a script puts there
        held_name, token = held[:2] if isinstance(held, list) and len(held) >= 2 else (None, None)
        return studio.rater(held_name if key == "" and held_name else name_, token, username(profile)), kept, key

    def show(pair: dict, rater):
        pair["client_id"] = str(uuid.uuid4())
        return pair["image_a"], pair["image_b"], f"### {pair['prompt']}", pair, studio.counts_line(rater)

    def first_pair(name_: str, kept: dict, profile: gr.OAuthProfile | None = None):
        try:
            rater = who(name_, kept, profile)[0]
        except (ValueError, PermissionError) as e:  # no name yet, or not signed in: show the pair and say so
            out = show(studio.next_pair(), None)
            return (*out[:4], f"{out[4]} · {e}")
        return show(studio.next_pair(), rater)

    def vote(choice: str):
        def cast(name_: str, pair: dict, kept: dict, profile: gr.OAuthProfile | None = None):
            rater, kept, key = who(name_, kept, profile)
            if not pair:
                raise ValueError("no pair shown yet")
            row = studio.vote(rater, pair["a"], pair["b"], choice, pair["client_id"])
            if row.get("rater_token"):
                kept = {**kept, key: [rater.name, row["rater_token"]]}
            return (*show(studio.next_pair(), rater), kept)

        cast.__name__ = f"vote_{choice}"
        return user_errors(cast)

    def undo(name_: str, kept: dict, profile: gr.OAuthProfile | None = None):
        rater = who(name_, kept, profile)[0]
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
        btn.click(vote(choice), [name, pair, tokens], out + [tokens], api_visibility="private")
    b_undo.click(user_errors(undo), [name, tokens], out, api_visibility="private")
    return {"first_pair": (user_errors(first_pair), [name, tokens], out)}
