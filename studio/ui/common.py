"""What every tab shares: the one error translator, the signed-in user, hotkeys and CSS."""

from __future__ import annotations

import gradio as gr

from studio import userlog

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

# the toy's 64x64 images are shown large and sharp: upscaled without blur
CSS = "#pair-row img, #compare-gallery img {image-rendering: pixelated;} .keys {opacity: .7}"


def user_errors(fn):
    """Turn the runtime's input errors into a message in the page and one log line (no traceback)."""
    return userlog.user_errors(fn, lambda m: gr.Error(m, print_exception=False))


def username(profile: gr.OAuthProfile | None) -> str | None:
    """The Hugging Face username of a signed-in visitor (Spaces with hf_oauth), else None."""
    return getattr(profile, "username", None) if profile is not None else None
