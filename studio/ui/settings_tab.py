"""Settings tab: sampling, rounds and the gate (admin); the model and paths come from environment variables."""

from __future__ import annotations

import gradio as gr

from studio import views

from .common import user_errors


def build(studio, password: gr.Textbox, admin) -> None:
    s = studio.settings

    def save(password_: str, steps, guidance, epochs, auto, guard=None, kl=None, ab=None, swap=None,
             profile: gr.OAuthProfile | None = None):
        admin(password_, profile)
        return studio.update_settings(steps, guidance, epochs, auto, guard, kl, ab, swap)

    gr.Markdown(f"model **{views.model_name(s.model)}**{' + ' + views.model_name(s.lcm_lora) if s.lcm_lora else ''} · "
                f"reward backbone **{views.model_name(s.clip)}** · prompts **{views.model_name(s.prompt_set)}** "
                "(set by environment variables, see README)")
    steps = gr.Slider(2, 16, value=s.steps, step=1, label="LCM steps")
    guidance = gr.Slider(1, 15, value=s.guidance, step=0.5, label="guidance scale")
    base_factor = s.round_epochs_base_factor
    base_epochs = f" (x {base_factor:g} for a round from the base model)" if base_factor != 1 else ""
    epochs = gr.Slider(1, 200, value=s.round_epochs, step=1, label="RLCM epochs per round" + base_epochs)
    auto = gr.Number(value=s.auto_round_every, precision=0, label="auto: start a round every N new ratings (0 = off)")
    guard = gr.Number(value=s.alignment_guard, minimum=0,
                      label="alignment guard: CLIP prompt score's pull, as a share of the reward model's (0 = off)")
    swap = gr.Number(value=s.swap_guard, minimum=0,
                     label="swap guard: penalty when the image fits a one-word change of its prompt (a size, colour or "
                           "shape swapped) better than the prompt itself (0 = off)")
    kl = gr.Number(value=s.kl_coef, minimum=0, label="KL anchor to the base model (0 = off)")
    ab = gr.Slider(0, 1, value=s.ab_fraction, step=0.05,
                   label="share of pairs that show a candidate on trial against the served version")
    b = gr.Button("Save (admin)", elem_id="btn-settings")
    saved = gr.JSON(label="saved")
    # raw values (preprocess=False): the sliders' own bounds checks would print a traceback per API misuse;
    # studio.settings checks every value itself (finite, in range) and logs one line
    b.click(user_errors(save), [password, steps, guidance, epochs, auto, guard, kl, ab, swap], [saved],
            api_name="save_settings", preprocess=False)
