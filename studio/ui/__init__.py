"""The Gradio app: one builder per tab, each a thin layer over `studio.runtime.Studio`."""

from .app import build_app, launch_kwargs

__all__ = ["build_app", "launch_kwargs"]
