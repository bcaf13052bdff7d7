"""The browser UI (Gradio), a thin layer over ``modeledit.api``: ``modeledit ui`` starts it.

One tab per task — edit a fact (stacked, removable, downloadable edits), trace, compare, inpaint,
Imagic, classifier edits. ``app.py`` builds the page, ``session.py`` holds the per-app models and locks
and the per-browser-tab stacks, one module per tab; importing this package does not import gradio."""

from __future__ import annotations

__all__ = ["build_app", "serve"]


def __getattr__(name: str):
    if name in __all__:
        from modeledit.ui import app

        return getattr(app, name)
    raise AttributeError(name)
