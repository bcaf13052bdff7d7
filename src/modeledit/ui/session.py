"""What the page keeps for each browser tab: a ``Session`` (its stack of edits, its cancel flags, its own
scratch directory), and the ``Job`` of one request (progress and cancel). The app's models and locks
are in workspace.py.

The shared models' weights are only ever changed inside one request, under the model's lock: a request
enters ``edit.applied(lm)`` for each of its session's stacked edits in order, computes, and leaves them
(restored exactly) before the lock is released. No other session can see them.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from modeledit.errors import RequestError


class Cancelled(Exception):
    """The user pressed Cancel: the work stops at its next progress report (weights restored)."""


class Job:
    """One long piece of work of one session: reports progress to the page and stops when cancelled.

    ``job.bar(description, unit)`` gives a ``(done, total)`` callback for the library's ``progress=``
    arguments; every call checks the cancel flag and raises ``Cancelled`` when it is set."""

    def __init__(self, flag: threading.Event, report: Callable[..., Any] | None = None, stages: int = 3):
        self.flag = flag
        self.report = report
        self.stage, self.stages = 0, stages  # what ``say`` counts: the job's named steps
        self.flag.clear()

    def check(self) -> None:
        if self.flag.is_set():
            raise Cancelled()

    def say(self, description: str) -> None:
        """Show what is happening now (one of the job's ``stages`` named steps)."""
        self.check()
        self.stage = min(self.stage + 1, self.stages)
        if self.report is not None:
            self.report((self.stage, self.stages), desc=description, unit="steps")

    def bar(self, description: str, unit: str = "steps") -> Callable[[int, int], None]:
        def update(done: int, total: int) -> None:
            self.check()
            if self.report is not None:
                self.report((done, total), desc=description, unit=unit)
        return update


class Session:
    """One browser tab: its stacked LM edits (each computed on the model holding the earlier ones), its
    cancel flags and scratch files. Lives in a ``gr.State``; ``rev`` counts changes of the stack (the
    page re-draws the stack list when it moves)."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex  # server-made: names the scratch directory (never the browser's ids)
        self.items: list[StackItem] = []
        self.model: str | None = None  # the model the stack's edits belong to
        self.rev = 0
        self.lock = threading.Lock()
        self.flags: dict[str, threading.Event] = {}
        self.root: Path | None = None
        self.download: Path | None = None  # the whole stack in one file, when its kinds allow
        self.download_note = ""  # why there is none
        self._merged: tuple[int, list] | None = None

    # gr.State deep-copies the value it is given; a session is made fresh for each tab, so no copy
    def __deepcopy__(self, memo: dict) -> "Session":
        return self

    def __hash__(self) -> int:  # gradio tracks a State's changes by hash: a change of the stack is a change
        return hash((self.id, self.rev))

    def job(self, kind: str, report: Callable[..., Any] | None = None, stages: int = 3) -> Job:
        return Job(self.flags.setdefault(kind, threading.Event()), report, stages)

    def cancel(self, kind: str) -> None:
        self.flags.setdefault(kind, threading.Event()).set()

    def scratch(self, workspace: Any, name: str) -> Path:
        """A fresh directory of this session's, under the app's scratch directory."""
        if self.root is None:
            self.root = workspace.scratch / self.id
        d = self.root / f"{name}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        return d

    def close(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- the stack ----------------------------------------------------------------------------------
    def add(self, item: "StackItem") -> None:
        self.items.append(item)
        self.model = item.model
        self.rev += 1

    def remove_from(self, index: int) -> list["StackItem"]:
        """Remove edit ``index`` and every later one (they were computed on, and fingerprinted against,
        the model holding it). Returns the removed items."""
        if not 0 <= index < len(self.items):
            raise RequestError("edit", f"there is no edit {index + 1} in this page's stack (it holds {len(self.items)})")
        gone = self.items[index:]
        del self.items[index:]
        if not self.items:
            self.model = None
        self.rev += 1
        return gone

    def check_model(self, name: str) -> None:
        if self.items and self.model != name:
            raise RequestError("model", f"this page's stack holds edits of {self.model}: remove them, or choose {self.model} again")

    def appliers(self) -> list:
        """What to enter, in order, to hold the stack: weight patches and codebooks one by one; in-context
        edits merged into one (the model reads a single context, the nearest fact's)."""
        if self._merged is not None and self._merged[0] == self.rev:
            return self._merged[1]
        out: list = []
        contexts: dict[type, list] = {}
        for it in self.items:
            if it.kind in ("context", "memory"):
                contexts.setdefault(type(it.edit), []).append(it.edit)
            else:
                out.append(it.edit)
        for cls, edits in contexts.items():
            out.append(edits[0] if len(edits) == 1 else cls([e for x in edits for e in x.entries], edits[0].meta))
        self._merged = (self.rev, out)
        return out


@dataclass
class StackItem:
    edit: Any  # a Patch, a CodebookEdit or a ContextEdit
    label: str  # one line for the list
    model: str
    file: Path | None = None  # the edit saved for download
    info: dict = field(default_factory=dict)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this edit in the workspace's memo

    @property
    def kind(self) -> str:
        return getattr(self.edit, "kind", "patch")


@contextmanager
def holding(lm: Any, edits: Sequence[Any]) -> Iterator[None]:
    """The model with ``edits`` applied in order; all restored on exit (also on an error)."""
    with ExitStack() as stack:
        for e in edits:
            stack.enter_context(e.applied(lm))
        yield
