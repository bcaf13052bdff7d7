"""What every tab shares: the page's style, messages (errors as one line, the CLI's wording, never a
traceback), HTML tables, progress reporting with cancel, and images in and out."""

from __future__ import annotations

import html
import logging
from typing import Any, Callable, Sequence

from modeledit.errors import ModelEditError, RequestError
from modeledit.ui.session import Cancelled

log = logging.getLogger(__name__)

CSS = """
.me-msg { padding: 8px 12px; border-radius: 6px; margin: 4px 0; font-size: 15px; }
.me-ok { background: #ecfdf3; border: 1px solid #86d9a8; color: #14532d; }
.me-error { background: #fef2f2; border: 1px solid #f5a3a3; color: #8b1c1c; }
.me-note { background: #fffbeb; border: 1px solid #f4d27a; color: #6b4b00; }
.me-info { background: #f1f5f9; border: 1px solid #cbd5e1; color: #1e293b; }
table.me-table { border-collapse: collapse; width: 100%; margin: 6px 0 10px 0; font-size: 15px; border: none !important; }
table.me-table tr, table.me-table thead, table.me-table tbody { border: none !important; }
table.me-table th, table.me-table td { border: none !important; border-bottom: 1px solid #e2e8f0 !important; }
table.me-table th { text-align: left; background: #f1f5f9; padding: 6px 8px; border-bottom: 2px solid #cbd5e1; }
table.me-table td { padding: 6px 8px; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
table.me-table td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.me-table td.after { background: #f0fdf4; }
.me-caption { color: #475569; font-size: 13px; margin: 2px 0 8px 0; }
.me-facts { margin: 4px 0; padding-left: 18px; font-size: 15px; }
.me-stack-row { align-items: center !important; }
.me-stack-label { font-size: 15px; }
.me-pixels img, .me-pixels canvas { image-rendering: pixelated; }
.me-pixels img { object-fit: contain !important; }
.me-pixels .image-frame img { width: 100% !important; height: 100% !important; }
.me-pixels .image-frame { width: 100% !important; height: 100% !important; }
.me-pixels .image-container, .me-pixels .grid-wrap { background: #e2e8f0; }
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def message(kind: str, text: str, *, prefix: str | None = None) -> str:
    """A one-line message box; ``kind`` is ok, error, note or info."""
    head = f"<b>{esc(prefix)}</b> " if prefix else ""
    return f'<div class="me-msg me-{kind}">{head}{esc(text)}</div>'


def error_message(exc: BaseException) -> str:
    """The CLI's wording: ``error: <the message>`` (modeledit's errors name the field and the fix)."""
    return message("error", str(exc), prefix="error:")


def guard(n_outputs: int, work: Callable[[], Sequence[Any]], skip: Any) -> tuple:
    """Run ``work`` (which returns all ``n_outputs`` values, the message first); on modeledit's own errors,
    a cancel, or a bug, return only the message and leave the other outputs as they are."""
    try:
        out = tuple(work())
        assert len(out) == n_outputs, (len(out), n_outputs)
        return out
    except ModelEditError as exc:
        first = error_message(exc)
    except Cancelled:
        first = message("note", "cancelled: nothing was kept, the model is as it was")
    except Exception as exc:  # noqa: BLE001  (a page shows a message, never a traceback; the log keeps it)
        log.exception("the page's request failed")
        first = message("error", f"{type(exc).__name__}: {exc} (a bug: the server's log has the details)", prefix="internal error:")
    return (first,) + tuple(skip() for _ in range(n_outputs - 1))


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[Any]], *, classes: Sequence[str] | None = None,
          elem_class: str = "") -> str:
    """An HTML table; ``classes`` gives each column's cell class (``num`` right-aligns, ``after`` tints)."""
    classes = list(classes or [""] * len(rows[0] if rows else headers or []))
    head = f"<thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in headers)}</tr></thead>" if headers else ""
    body = "".join(
        "<tr>" + "".join(f'<td class="{c}">{esc(v)}</td>' for v, c in zip(row, classes)) + "</tr>" for row in rows
    )
    return f'<table class="me-table {elem_class}">{head}<tbody>{body}</tbody></table>'


def caption(text: str) -> str:
    return f'<div class="me-caption">{esc(text)}</div>'


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def fmt_p(p: float | None) -> str:
    return "—" if p is None else f"{p:.4f}"


def optional(text: str | None) -> str | None:
    """A text box's value, or None when it is empty (the CLI's option not given)."""
    return text if text is not None and text.strip() else None


def optional_int(text: Any, field: str) -> int | None:
    if text is None or str(text).strip() == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RequestError(field, f"{text!r} is not a whole number") from None
    if value != int(value):
        raise RequestError(field, f"{text!r} is not a whole number")
    return int(value)


def settings_lines(text: str | None) -> list[str]:
    """The non-empty lines of a text box (``name=value`` settings, like the CLI's --set; extra prompts)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]
