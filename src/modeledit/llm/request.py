"""The edit request for language models: rewrite what follows ``prompt`` (about ``subject``) to ``target``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from modeledit.errors import RequestError


@dataclass(frozen=True)
class Request:
    """``prompt`` holds one ``{}`` where the subject goes; ``target`` is the new continuation, taken
    exactly as given (write the leading space a tokenizer expects: ``" Rome"``, not ``"Rome"``).
    ``target_true`` (optional) is the old answer, used by evaluation."""

    prompt: str
    subject: str
    target: str
    target_true: str | None = None

    def __post_init__(self) -> None:
        check_template(self.prompt, self.subject)
        if not isinstance(self.target, str) or not self.target.strip():
            raise RequestError("target", "is empty: give the new continuation, e.g. ' Rome'")
        if self.target_true is not None and (not isinstance(self.target_true, str) or not self.target_true.strip()):
            raise RequestError("target_true", "is empty: give the old answer, e.g. ' Paris', or leave it out")
        if self.target_true is not None and self.target_true.strip() == self.target.strip():
            raise RequestError("target", f"{self.target!r} equals target_true: an edit must change the answer")

    @classmethod
    def from_text(cls, text: str, subject: str, target: str, target_true: str | None = None) -> "Request":
        """Build a request from a prompt with the subject written out (its first occurrence becomes '{}')."""
        return cls(template_of(text, subject), subject, target, target_true)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return fill(self.prompt, self.subject)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Request":
        return cls(d["prompt"], d["subject"], d["target"], d.get("target_true"))


def fill(template: str, subject: str) -> str:
    """``template`` with its ``{}`` replaced by ``subject`` (other braces left alone, unlike str.format)."""
    return template.replace("{}", subject, 1)


def check_template(prompt: str, subject: str) -> None:
    """A prompt with exactly one ``{}`` for a non-empty plain-text subject, or a RequestError saying what to fix."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt", "is empty: write the sentence with '{}' for the subject, e.g. '{} is located in the city of'")
    n = prompt.count("{}")
    if n == 0:
        hint = (
            f" The subject occurs in it: use Request.from_text({prompt!r}, subject=...) or write "
            f"{prompt.replace(subject, '{}', 1)!r}"
            if isinstance(subject, str) and subject and subject in prompt
            else ""
        )
        raise RequestError("prompt", f"{prompt!r} has no '{{}}' placeholder for the subject: write e.g. '{{}} is located in the city of'.{hint}")
    if n > 1:
        raise RequestError("prompt", f"{prompt!r} has {n} '{{}}' placeholders: use exactly one, where the subject goes")
    if not isinstance(subject, str) or not subject.strip():
        raise RequestError("subject", "is empty: name the entity whose fact changes, e.g. 'The Eiffel Tower'")
    if "{}" in subject:
        raise RequestError("subject", f"{subject!r} contains '{{}}': the subject is plain text")


def template_of(prompt: str, subject: str) -> str:
    """The '{}' template of a prompt given either as a template or with the subject written out."""
    if isinstance(prompt, str) and "{}" in prompt:
        check_template(prompt, subject)
        return prompt
    if not isinstance(subject, str) or not subject.strip():
        raise RequestError("subject", "is empty: name the entity, exactly as it is written in the prompt")
    if not isinstance(prompt, str) or subject not in prompt:
        raise RequestError(
            "subject", f"{subject!r} does not occur in the prompt {prompt!r}: pass the subject exactly as it is written there"
        )
    return prompt.replace(subject, "{}", 1)


def read_requests(path) -> list[Request]:
    """Requests from a JSON file holding a list of ``{prompt, subject, target[, target_true]}`` objects (the
    prompt with '{}' or with the subject written out) or of CounterFact cases (short or original form)."""
    from modeledit.report import parse_records, read_json_list

    def parse(i, rec):
        if "requested_rewrite" in rec or "target_new" in rec:
            from modeledit.llm.bench.counterfact import _case

            return _case(i, rec).request
        return Request(template_of(rec["prompt"], rec["subject"]), rec["subject"], rec["target"], rec.get("target_true"))

    example = "a JSON list of {prompt, subject, target} objects or CounterFact cases"
    return parse_records(path, read_json_list(path, "requests", example), parse, "a request: " + example)
