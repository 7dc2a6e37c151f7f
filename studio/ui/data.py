"""Data tab: counts, per-rater statistics, Parquet export (Pick-a-Pic v2 columns) and validated import."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .common import user_errors


def build(studio, password: gr.Textbox, admin) -> None:
    def view():
        return studio.store.counts(), pd.DataFrame(studio.store.rater_stats())

    def upload(password_: str, file, profile: gr.OAuthProfile | None = None):
        admin(password_, profile)
        if not file:
            raise ValueError("choose a .parquet file first")
        return (studio.import_data(file), *view())

    b_refresh = gr.Button("Refresh", elem_id="btn-data")
    counts = gr.JSON(label="counts")
    raters = gr.Dataframe(label="per rater", interactive=False)
    b_export = gr.Button("Export preferences (Parquet, Pick-a-Pic v2 columns)", elem_id="btn-export")
    export_file = gr.File(label="download")
    data_upload = gr.File(label="import preferences (.parquet)", file_types=[".parquet"])
    b_import = gr.Button("Import (admin)", elem_id="btn-import")
    report = gr.JSON(label="import report")
    b_refresh.click(user_errors(view), None, [counts, raters], api_visibility="private")
    b_export.click(user_errors(studio.export_data), None, [export_file], api_name="export_data")
    b_import.click(user_errors(upload), [password, data_upload], [report, counts, raters], api_visibility="private")
