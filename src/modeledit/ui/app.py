"""The page: one gradio Blocks with a tab per task, built over one Workspace; and ``serve``, which starts
it on loopback (unless told otherwise) with the upload limit, and loads the default model in the
background so that the page is up at once."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from modeledit.ui import classifier_tab, compare_tab, edit_tab, imagic_tab, inpaint_tab, page, trace_tab
from modeledit.ui.session import Session
from modeledit.ui.workspace import Workspace

log = logging.getLogger(__name__)

HEADER = """# modeledit
Edit trained models and see what moved: a fact in a language model, a region of an image, a label of a
classifier. Models load on first use (the first request waits for them)."""


def build_app(ws: Workspace) -> gr.Blocks:
    """The Blocks (not started). Each browser tab gets its own Session (its stack of edits)."""
    # gradio's own copies of uploads and outputs: files older than an hour are removed, every hour
    with gr.Blocks(title="modeledit", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(HEADER)
        state = gr.State(Session, delete_callback=lambda s: s.close() if isinstance(s, Session) else None)
        with gr.Tabs():
            edit_tab.build(ws, state)
            trace_tab.build(ws, state)
            compare_tab.build(ws, state)
            inpaint_tab.build(ws, state)
            imagic_tab.build(ws, state)
            classifier_tab.build(ws, state)
    # several requests may run at once (each session's own work); the model locks serialise what touches weights
    demo.queue(default_concurrency_limit=4)
    return demo


def serve(ws: Workspace, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, warm: bool = True,
          quiet: bool = False) -> tuple[gr.Blocks, str]:
    """Start the page; returns (the Blocks, its URL). ``block``: serve until interrupted, then clean up."""
    demo = build_app(ws)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True, quiet=quiet,
        ssr_mode=False, mcp_server=False, enable_monitoring=False, show_error=False, footer_links=[],
        max_file_size=f"{ws.limits.max_upload_mb}mb", allowed_paths=[str(ws.scratch)], css=page.CSS,
        theme=gr.themes.Default(),
    )
    if warm:
        ws.warm()
    if block:
        try:
            demo.block_thread()
        finally:
            close(demo, ws)
    return demo, url


def close(demo: Any, ws: Workspace) -> None:
    try:
        demo.close()
    finally:
        ws.close()
