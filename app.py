"""RLCM Studio: rate pairs, fit a reward model, fine-tune the consistency model live (Gradio app).

Run: `python app.py` (toy LCM on a CPU); environment variables in `studio/settings.py` point it at a real model.
The tabs are built in `studio/ui/`, each a thin layer over `studio.runtime.Studio`.
"""

from __future__ import annotations

from studio.ui import build_app, launch_kwargs

__all__ = ["build_app", "launch_kwargs"]

if __name__ == "__main__":
    from studio.runtime import Studio
    from studio.settings import StudioSettings

    studio = Studio(StudioSettings.from_env())
    build_app(studio).queue(default_concurrency_limit=8).launch(**launch_kwargs(studio.settings))
