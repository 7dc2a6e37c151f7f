"""Data tab: counts for everyone; per-rater statistics, the Parquet export (Pick-a-Pic v2 columns, with rater
names) and validated import for the admin."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .common import user_errors


def build(studio, password: gr.Textbox, admin) -> None:
    def counts():
        return studio.store.counts()

    def raters(password_: str, profile: gr.OAuthProfile | None = None):
        admin(password_, profile)
        return pd.DataFrame(studio.store.rater_stats())

    def export(password_: str, profile: gr.OAuthProfile | None = None):
        admin(password_, profile)
        return studio.export_data()

    def upload(password_: str, file, profile: gr.OAuthProfile | None = None):
        admin(password_, profile)
        if not file:
            raise ValueError("choose a .parquet file first")
        return studio.import_data(file), counts()

    b_refresh = gr.Button("Refresh", elem_id="btn-data")
    counts_json = gr.JSON(label="counts")
    b_raters = gr.Button("Per-rater statistics (admin)", elem_id="btn-raters")
    raters_df = gr.Dataframe(label="per rater", interactive=False)
    b_export = gr.Button("Export preferences with rater names (admin; Parquet, Pick-a-Pic v2 columns)",
                         elem_id="btn-export")
    export_file = gr.File(label="download")
    data_upload = gr.File(label="import preferences (.parquet)", file_types=[".parquet"])
    b_import = gr.Button("Import (admin)", elem_id="btn-import")
    report = gr.JSON(label="import report")
    b_refresh.click(user_errors(counts), None, [counts_json], api_visibility="private")
    b_raters.click(user_errors(raters), [password], [raters_df], api_visibility="private")
    b_export.click(user_errors(export), [password], [export_file], api_name="export_data")
    b_import.click(user_errors(upload), [password, data_upload], [report, counts_json], api_visibility="private")
