"""An edit that changes no weight: text the model reads before every prompt (IKE's demonstrations and new
facts; MeLLo's memory of facts, ``mello.py``). It applies, reverts, saves, loads and shows like a weight Patch, so the evaluation loop, the
outcome check and the CLI take it without special cases.

Applied to a ``LanguageModel`` it becomes the model's ``context``: scoring (``score.py``) and ``generate``
put ``prefix(prompt)`` before each prompt. Each edited fact has its own context (its demonstrations, then
``New Fact: <fact> <new answer>``, then ``Prompt:``); with several facts, a prompt reads the context of
the fact whose sentence is most similar to it (the same sentence encoder that retrieved the
demonstrations). Saved as JSON text (format ``modeledit.context-edit``), written atomically.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from modeledit.errors import PatchError
from modeledit.patch import Edit

FORMAT = "modeledit.context-edit"
VERSION = 1


def fact_sentence(request: Mapping[str, Any]) -> str:
    """The new fact as a sentence: the prompt with its subject, then the new target."""
    return request["prompt"].replace("{}", request["subject"], 1) + request["target"]


def fact_context(request: Mapping[str, Any], demonstrations: Sequence[str]) -> str:
    """What the model reads before a prompt about this fact (the prompt follows after a space)."""
    return "".join(demonstrations) + f"New Fact: {fact_sentence(request)}\nPrompt:"


@dataclass
class ContextEntry:
    """One in-context edit of one or many facts: each fact's demonstrations, least similar first."""

    method: str
    hparams: dict[str, Any]
    requests: list[dict[str, Any]]
    demonstrations: list[list[str]]
    info: dict[str, Any] = field(default_factory=dict)


class ContextEdit(Edit):
    """Facts and demonstrations put before every prompt while applied (``with edit.applied(lm): ...``)."""

    kind = "context"  # "memory": MeLLo's (mello.py), which also answers questions itself

    def __init__(self, entries: Sequence[ContextEntry], meta: Mapping[str, Any] | None = None, embedder: Any = None):
        self.entries = list(entries)
        self.meta = dict(meta or {})
        if not self.entries:
            raise PatchError("an in-context edit needs at least one fact")
        for e in self.entries:
            if len(e.requests) != len(e.demonstrations) or not e.requests:
                raise PatchError("an in-context edit needs one list of demonstrations per fact")
        self.contexts = [fact_context(r, d) for e in self.entries for r, d in zip(e.requests, e.demonstrations)]
        self._facts = [fact_sentence(r) for e in self.entries for r in e.requests]
        self._fact_emb = None
        self._embedder = embedder  # the sentence encoder that routes prompts to facts (loaded when first needed)

    @property
    def parameters(self) -> list[str]:
        return []  # no weight is touched

    def prefixes(self, prompts: Sequence[str]) -> list[str]:
        """The context read before each prompt: its nearest fact's (the only one's, for one fact)."""
        if len(self.contexts) == 1:
            return [self.contexts[0]] * len(prompts)
        return [self.contexts[i] for i in self.nearest(prompts)]

    def nearest(self, prompts: Sequence[str]) -> list[int]:
        """For each prompt, the index of the most similar edited fact."""
        if self._embedder is None:
            from modeledit.sentences import SentenceEmbedder

            self._embedder = SentenceEmbedder()
        if self._fact_emb is None:
            self._fact_emb = self._embedder(self._facts)
        return (self._embedder(list(prompts)) @ self._fact_emb.T).argmax(1).tolist()

    @contextmanager
    def applied(self, lm: Any) -> Iterator["ContextEdit"]:
        """The model reads the edit's context before every prompt inside the block; no weight changes."""
        if not hasattr(lm, "context"):
            raise PatchError("an in-context edit applies to a modeledit LanguageModel (load_model(...)), not a bare module")
        before = lm.context
        lm.context = self
        try:
            yield self
        finally:
            lm.context = before

    # -- saving ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "meta": self.meta,
            "entries": [
                {"method": e.method, "hparams": e.hparams, "requests": e.requests, "demonstrations": e.demonstrations, "info": e.info}
                for e in self.entries
            ],
        }

    def save(self, path: str | Path) -> Path:
        from modeledit.report import write_json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "ContextEdit":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PatchError(f"{path} is not a readable in-context edit ({exc}); save it again") from exc
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: Any, where: Any = "the edit") -> "ContextEdit":
        try:
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            entries = [ContextEntry(e["method"], e["hparams"], e["requests"], e["demonstrations"], e.get("info", {}))
                       for e in data["entries"]]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise PatchError(f"{where} is not a modeledit in-context edit ({exc}); save it again") from exc
        if data.get("kind") == "memory":
            from modeledit.llm.mello import MemoryEdit

            return MemoryEdit(entries, data.get("meta", {}))
        return cls(entries, data.get("meta", {}))

    def describe(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "edits": [
                {"method": e.method, "requests": e.requests, "hparams": e.hparams, "parameters": {},
                 "demonstrations": [len(d) for d in e.demonstrations], "info": e.info}
                for e in self.entries
            ],
        }

    def __repr__(self) -> str:
        return f"ContextEdit({len(self.requests)} fact(s), no weight changed)"


def is_context_edit_file(path: str | Path) -> bool:
    """Whether ``path`` holds an in-context edit (JSON) rather than a weight patch (safetensors)."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"{"
    except OSError:
        return False
