"""RLCM Studio: rate pairs, fit a reward model, fine-tune the consistency model live (Gradio app).

Every callback is a thin call into `studio.runtime.Studio`, which is tested without Gradio.
Run: `python app.py` (toy LCM on a CPU); environment variables in `studio/settings.py` point it at a real model.
"""

from __future__ import annotations

import functools
import os
import uuid

import gradio as gr
import pandas as pd

from rlcm.plot import reward_figure
from studio.runtime import Studio
from studio.settings import StudioSettings

# Gradio 6 has no hotkey API: a small script clicks buttons by elem_id, ignoring typing in text inputs.
HOTKEYS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
  const ids = {'1': 'btn-left', '2': 'btn-right', '3': 'btn-tie', ' ': 'btn-skip', 'u': 'btn-undo'};
  const el = ids[e.key] && document.getElementById(ids[e.key]);
  if (el) { e.preventDefault(); el.click(); }
});
</script>
"""

CSS = "#pair-row img {image-rendering: pixelated;} .keys {opacity: .7}"


def _err(fn):
    """Turn the runtime's input errors into messages shown in the page."""

    @functools.wraps(fn)  # keeps the signature: Gradio injects gr.Request by annotation
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, PermissionError, RuntimeError, KeyError) as e:
            raise gr.Error(str(e).strip("'\"")) from None

    return wrapped


def _username(request: gr.Request | None) -> str | None:
    """The Hugging Face username of a signed-in visitor (Spaces with hf_oauth), else None."""
    if request is None or not os.environ.get("SPACE_ID"):
        return None
    try:
        info = request.session.get("oauth_info") or {}
    except (AssertionError, AttributeError):  # no session middleware: not signed in
        return None
    return (info.get("userinfo") or {}).get("preferred_username")


def build_app(studio: Studio) -> gr.Blocks:
    s = studio.settings
    on_space = s.on_space

    # ------------------------------------------------------------ pure handlers

    def show_pair(rater: str):
        pair = studio.next_pair()
        pair["client_id"] = str(uuid.uuid4())
        mine, total = studio.rater_counts(rater) if rater else (0, studio.store.counts()["comparisons"])
        return (pair["image_a"], pair["image_b"], f"### {pair['prompt']}", pair,
                f"your ratings: **{mine}** · all ratings: **{total}** · serving **{studio.generator.version}**")

    def vote(name: str, pair: dict, choice: str, request: gr.Request = None):
        rater = studio.rater_name(name, _username(request))
        if not pair:
            raise ValueError("no pair shown yet")
        studio.vote(rater, pair["a"], pair["b"], choice, pair["client_id"])
        return show_pair(rater)

    def undo(name: str, request: gr.Request = None):
        rater = studio.rater_name(name, _username(request))
        row = studio.undo(rater)
        gr.Info("undone: your last vote" if row else "nothing to undo")
        mine, total = studio.rater_counts(rater)
        return f"your ratings: **{mine}** · all ratings: **{total}** · serving **{studio.generator.version}**"

    def admin(password: str, request: gr.Request | None = None) -> str:
        return studio.check_admin(password, _username(request))

    def start_round(password: str, request: gr.Request = None) -> str:
        who = admin(password, request)
        rid = studio.start_round(by=who)
        return f"round {rid} started"

    def cancel_round(password: str, request: gr.Request = None) -> str:
        admin(password, request)
        return "cancelling…" if studio.cancel_round() else "no round is running"

    def activate(password: str, version: str, request: gr.Request = None) -> str:
        admin(password, request)
        return f"serving **{studio.activate(version)}**"

    def train_status():
        p = studio.rounds.snapshot()
        rows = p.get("rows", [])
        fig = reward_figure(rows, "reward under the learned reward model", (7, 2.8))
        state = p.get("state", "idle")
        text = f"**{state}**"
        if "round" in p:
            text += f" · round {p['round']} · epoch {p.get('epoch', 0)}/{p.get('epochs', '?')}"
        if p.get("reward_model"):
            rm = p["reward_model"]
            text += f" · reward model held-out accuracy {rm.get('accuracy') or 0:.1%} on {rm.get('n_test')} pairs"
        if p.get("error"):
            text += f"\n\nfailed: `{p['error']}`"
        hist = pd.DataFrame([{"round": r["id"], "status": r["status"], "by": (r.get("config") or {}).get("by"),
                              **{k: v for k, v in (r.get("metrics") or {}).items() if not isinstance(v, dict)},
                              "created": r.get("created_at")} for r in studio.store.rounds()])
        return text, fig, hist, gr.update(choices=studio.versions(), value=studio.generator.version)

    def compare_view():
        rows = studio.compare()
        gallery = [(img, f"{r['version']} · {p}") for r in rows for img, p in zip(r["images"], r["prompts"])]
        table = pd.DataFrame([{k: r.get(k) for k in ("version", "reward", "fidelity")} for r in rows])
        return gallery, table

    def rm_view():
        info = studio.reward_model_info()
        best, worst = studio.liked_most_and_least()
        return info, best, worst, info.get("zip")

    def fit_rm(password: str, request: gr.Request = None):
        admin(password, request)
        studio.fit_reward_model()
        return rm_view()

    def import_rm(password: str, file, request: gr.Request = None):
        admin(password, request)
        if not file:
            raise ValueError("choose an exported reward model (.zip) first")
        studio.import_reward_model(file)
        return rm_view()

    def data_view():
        return studio.store.counts(), pd.DataFrame(studio.store.rater_stats())

    def import_data(password: str, file, request: gr.Request = None):
        admin(password, request)
        if not file:
            raise ValueError("choose a .parquet file first")
        report = studio.import_data(file)
        return (report, *data_view())

    def save_settings(password: str, steps, guidance, epochs, auto, guard=None, kl=None, request: gr.Request = None):
        admin(password, request)
        return studio.update_settings(steps, guidance, epochs, auto, guard, kl)

    # ------------------------------------------------------------ layout

    with gr.Blocks(title="RLCM Studio") as demo:
        gr.Markdown("# RLCM Studio\nRate pairs · fit a reward model · fine-tune the consistency model live")
        with gr.Row():
            name = gr.Textbox(label="your name", placeholder="who is rating", elem_id="rater-name", scale=2,
                              visible=not on_space)
            password = gr.Textbox(label="admin password", type="password", elem_id="admin-pw", scale=1)
            if on_space:
                gr.LoginButton()
        with gr.Tabs():
            with gr.Tab("Rate", id="rate"):
                prompt_md = gr.Markdown(elem_id="pair-prompt")
                with gr.Row(elem_id="pair-row"):
                    img_a = gr.Image(label="left", type="filepath", interactive=False, height=320,
                                     elem_id="img-left")
                    img_b = gr.Image(label="right", type="filepath", interactive=False, height=320,
                                     elem_id="img-right")
                with gr.Row():
                    b_left = gr.Button("Left is better (1)", variant="primary", elem_id="btn-left")
                    b_right = gr.Button("Right is better (2)", variant="primary", elem_id="btn-right")
                    b_tie = gr.Button("Tie (3)", elem_id="btn-tie")
                    b_skip = gr.Button("Skip (space)", elem_id="btn-skip")
                    b_undo = gr.Button("Undo (u)", elem_id="btn-undo")
                counts_md = gr.Markdown(elem_id="rate-counts")
                gr.Markdown("keys: 1 left · 2 right · 3 tie · space skip · u undo", elem_classes="keys")
                pair = gr.State({})
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    b_start = gr.Button("Start fine-tune round", variant="primary", elem_id="btn-start-round")
                    b_cancel = gr.Button("Cancel round", elem_id="btn-cancel-round")
                train_md = gr.Markdown("idle", elem_id="train-status")
                curve = gr.Plot(reward_figure([], "reward under the learned reward model", (7, 2.8)),
                                label="reward under the learned reward model",
                                elem_id="reward-curve")
                history = gr.Dataframe(label="rounds", interactive=False, elem_id="round-history")
                with gr.Row():
                    version = gr.Dropdown(label="serve version", choices=studio.versions(),
                                          value=studio.generator.version, elem_id="version-select")
                    b_activate = gr.Button("Make active", elem_id="btn-activate")
                action_md = gr.Markdown(elem_id="train-action")
            with gr.Tab("Compare", id="compare"):
                gr.Markdown("Fixed held-out prompts and seeds, rendered by the base model and every round.")
                b_compare = gr.Button("Refresh", elem_id="btn-compare")
                comp_table = gr.Dataframe(label="scores (reward model, toy prompt fidelity)", interactive=False,
                                          elem_id="compare-table")
                comp_gallery = gr.Gallery(columns=8, height="auto", elem_id="compare-gallery")
            with gr.Tab("Reward model", id="reward"):
                with gr.Row():
                    b_rm_refresh = gr.Button("Refresh", elem_id="btn-rm-refresh")
                    b_fit = gr.Button("Fit now (admin)", elem_id="btn-fit")
                rm_json = gr.JSON(label="held-out metrics", elem_id="rm-metrics")
                liked = gr.Gallery(label="liked most (recent samples)", columns=4, height="auto")
                disliked = gr.Gallery(label="liked least", columns=4, height="auto")
                rm_zip = gr.File(label="export (zip: model.safetensors, config.json, README.md)")
                rm_upload = gr.File(label="import an exported reward model (.zip)", file_types=[".zip"])
                b_rm_import = gr.Button("Import (admin)", elem_id="btn-rm-import")
            with gr.Tab("Data", id="data"):
                b_data = gr.Button("Refresh", elem_id="btn-data")
                data_json = gr.JSON(label="counts")
                raters = gr.Dataframe(label="per rater", interactive=False)
                b_export = gr.Button("Export preferences (Parquet, Pick-a-Pic v2 columns)", elem_id="btn-export")
                export_file = gr.File(label="download")
                data_upload = gr.File(label="import preferences (.parquet)", file_types=[".parquet"])
                b_import = gr.Button("Import (admin)", elem_id="btn-import")
                import_json = gr.JSON(label="import report")
            with gr.Tab("Settings", id="settings"):
                gr.Markdown(f"model **{s.model}**{' + ' + s.lcm_lora if s.lcm_lora else ''} · reward backbone "
                            f"**{s.clip}** · prompts **{s.prompt_set}** · data **{s.data_dir}** "
                            "(model and paths come from environment variables, see README)")
                steps = gr.Slider(2, 16, value=s.steps, step=1, label="LCM steps")
                guidance = gr.Slider(1, 15, value=s.guidance, step=0.5, label="guidance scale")
                epochs = gr.Slider(1, 200, value=s.round_epochs, step=1, label="RLCM epochs per round")
                auto = gr.Number(value=s.auto_round_every, precision=0,
                                 label="auto: start a round every N new ratings (0 = off)")
                guard = gr.Number(value=s.alignment_guard, minimum=0,
                                  label="alignment guard: reward + this x CLIP prompt score (0 = off)")
                kl = gr.Number(value=s.kl_coef, minimum=0, label="KL anchor to the base model (0 = off)")
                b_settings = gr.Button("Save (admin)", elem_id="btn-settings")
                settings_json = gr.JSON(label="saved")

        # ------------------------------------------------------------ wiring
        rate_out = [img_a, img_b, prompt_md, pair, counts_md]
        demo.load(_err(show_pair), [name], rate_out, api_visibility="private")
        def voter(choice: str):
            def cast(name: str, pair: dict, request: gr.Request):
                return vote(name, pair, choice, request)

            return _err(cast)

        for btn, choice in ((b_left, "a"), (b_right, "b"), (b_tie, "tie"), (b_skip, "skip")):
            btn.click(voter(choice), [name, pair], rate_out, api_visibility="private")
        b_undo.click(_err(undo), [name], [counts_md], api_visibility="private")
        b_start.click(_err(start_round), [password], [action_md], api_name="start_round")
        b_cancel.click(_err(cancel_round), [password], [action_md], api_name="cancel_round")
        b_activate.click(_err(activate), [password, version], [action_md], api_name="activate")
        timer = gr.Timer(1.0)
        timer.tick(train_status, None, [train_md, curve, history, version], api_visibility="private",
                   show_progress="hidden")
        b_compare.click(_err(compare_view), None, [comp_gallery, comp_table], api_name="compare")
        b_rm_refresh.click(_err(rm_view), None, [rm_json, liked, disliked, rm_zip], api_visibility="private")
        b_fit.click(_err(fit_rm), [password], [rm_json, liked, disliked, rm_zip], api_name="fit_reward_model")
        b_rm_import.click(_err(import_rm), [password, rm_upload], [rm_json, liked, disliked, rm_zip],
                          api_visibility="private")
        b_data.click(_err(data_view), None, [data_json, raters], api_visibility="private")
        b_export.click(_err(studio.export_data), None, [export_file], api_name="export_data")
        b_import.click(_err(import_data), [password, data_upload], [import_json, data_json, raters],
                       api_visibility="private")
        b_settings.click(_err(save_settings), [password, steps, guidance, epochs, auto, guard, kl], [settings_json],
                         api_name="save_settings")

        # ------------------------------------------------------------ JSON API (gradio_client, load tests)
        @gr.api(api_name="next_pair")
        def api_next_pair() -> dict:
            """A pair to rate: prompt, sample ids a/b, and a fresh client_id to submit with."""
            p = studio.next_pair()
            return {"prompt": p["prompt"], "a": p["a"], "b": p["b"], "version": p["version"],
                    "client_id": str(uuid.uuid4())}

        @gr.api(api_name="vote")
        def api_vote(rater: str, sample_a: str, sample_b: str, choice: str, client_id: str) -> dict:
            """Record a judgement (choice: a, b, tie, skip); a retried client_id is recorded once."""
            try:
                row = studio.vote(studio.rater_name(rater), sample_a, sample_b, choice, client_id)
            except (ValueError, PermissionError) as e:
                raise gr.Error(str(e)) from None
            return {"id": row["id"], "created": row["created"]}

        @gr.api(api_name="undo_vote")
        def api_undo(rater: str) -> dict:
            row = studio.undo(studio.rater_name(rater))
            return {"undone": row["id"] if row else None}

        @gr.api(api_name="status")
        def api_status() -> dict:
            """Counts, the served version, queue depth and the current round's progress."""
            st = studio.status()
            st["round"] = {k: v for k, v in st["round"].items() if k != "trace"}
            return st

        @gr.api(api_name="import_preferences")
        def api_import_data(password: str, path: str) -> dict:
            try:
                studio.check_admin(password)
                return studio.import_data(path)
            except (ValueError, PermissionError) as e:
                raise gr.Error(str(e)) from None

        @gr.api(api_name="generate")
        def api_generate(prompt: str, seed: int) -> dict:
            """Generate one image with the served model; returns the stored sample id."""
            prompt = (prompt or "").strip()
            if not prompt:
                raise gr.Error("empty prompt")
            if len(prompt) > 300:
                raise gr.Error("prompt too long (at most 300 characters)")
            images, v = studio.generator.generate([prompt], [int(seed)])
            sid = studio.store.add_sample(images[0], prompt, int(seed), s.steps, s.guidance, generator=v)
            return {"id": sid, "version": v}

    return demo


def launch_kwargs() -> dict:
    return {"head": HOTKEYS, "css": CSS, "theme": gr.themes.Soft()}


if __name__ == "__main__":
    studio = Studio(StudioSettings.from_env())
    build_app(studio).queue(default_concurrency_limit=8).launch(**launch_kwargs())
