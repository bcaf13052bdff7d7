"""The UI's work without a browser: completions remembered per prompt and per stack of edits."""

import pytest

pytest.importorskip("gradio", reason="the UI needs gradio (pip install -e '.[test]')")

from modeledit.ui.llm_work import complete  # noqa: E402
from modeledit.ui.workspace import Workspace  # noqa: E402


def test_completions_are_remembered_per_prompt_and_stack(tiny_factory, monkeypatch):
    lm = tiny_factory("llama")
    asked = []
    real = type(lm).generate

    def counting(self, prompts, max_new_tokens=20, **kw):
        asked.append(list(prompts))
        return real(self, prompts, max_new_tokens, **kw)

    monkeypatch.setattr(type(lm), "generate", counting)
    ws = Workspace()
    try:
        a, b, c = "The Eiffel Tower is in", "The Louvre is in", "Big Ben is in"
        first = complete(ws, lm, "tiny", [], [a, b], 5)
        assert first == real(lm, [a, b], 5) and asked == [[a, b]]
        # a new prompt beside an unchanged one: only the new one is completed
        assert complete(ws, lm, "tiny", [], [c, b, c], 5) == [real(lm, c, 5), first[1], real(lm, c, 5)]
        assert asked == [[a, b], [c]]
        complete(ws, lm, "tiny", ["uid-1"], [a], 5)  # another stack: its own completions
        complete(ws, lm, "tiny", [], [a, b, c], 5)  # everything known
        assert asked == [[a, b], [c], [a]]
    finally:
        ws.close()
