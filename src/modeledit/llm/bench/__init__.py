"""Benchmarks for language-model editing, one small interface for the one evaluation loop:

- ``load(path, limit)`` the cases of a data file (each with a ``case_id``), in file order;
- ``requests(case)`` the edit requests of a case;
- ``score(lm, case, reference)`` the case's metrics on the model as it is (``reference``: the unedited
  model's score of the same case, None when that is being computed);
- ``summarize(records)`` the summary of per-case records (``pre`` and ``post``, ×100);
- ``config()`` what, besides the method, changes the scores (kept in ``run.json``).
"""

from __future__ import annotations

from typing import Any

from modeledit.errors import RequestError

NAMES = ("counterfact", "zsre", "mquake")


def get_benchmark(name: str, **options: Any):
    """A benchmark by name; ``options`` go to its constructor (CounterFact: gen_tokens, compare; MQuAKE:
    cot, prompts_dir); options another benchmark takes are ignored."""
    if name == "counterfact":
        from modeledit.llm.bench.counterfact import CounterFact

        return CounterFact(**{k: v for k, v in options.items() if k in ("gen_tokens", "gen_seed", "compare")})
    if name == "zsre":
        from modeledit.llm.bench.zsre import ZsRE

        return ZsRE()
    if name == "mquake":
        from modeledit.llm.bench.mquake import MQuAKE

        return MQuAKE(**{k: v for k, v in options.items() if k in ("cot", "prompts_dir")})
    raise RequestError("benchmark", f"unknown benchmark {name!r}: choose one of {', '.join(NAMES)}")
