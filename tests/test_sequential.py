"""Editing in a row: the chain of batch edits, checkpoints, and a run killed (-9) that resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from modeledit import ModelEditError, RequestError
from modeledit.sequential import check_plan

from seq_child import TEXTS, run, tiny_llama

CHILD = Path(__file__).with_name("seq_child.py")


def test_bad_plans_are_refused():
    assert check_plan(10, 2, [4, 8]) == [4, 8, 10]
    for size, cps, what in [(0, [], "batch-size"), (11, [], "batch-size"), (2, [8, 4], "checkpoints"), (2, [4, 12], "checkpoints")]:
        with pytest.raises(RequestError, match=what):
            check_plan(10, size, cps)


@pytest.fixture
def one_thread():
    """torch on one thread, as the killed child runs: results are compared bit for bit, and a CPU's GEMM may
    block its sums by the thread count (it does on the AMD EPYC CI ran on, 2026-12-01: 1e-9 differences)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_a_killed_run_resumes_without_losing_or_repeating_an_edit(data, tokenizer, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    tok = tokenizer.name_or_path
    whole = run(str(tmp_path / "whole"), str(data / "counterfact-val.json"), tok)
    assert [r["edits"] for r in whole["checkpoints"]] == [2, 4, 6]
    assert sorted(p.name for p in (tmp_path / "whole" / "chain").iterdir()) == ["00000.safetensors", "00001.safetensors", "00002.safetensors"]
    first = whole["checkpoints"][0]
    assert first["post"]["efficacy_magnitude"] > first["pre"]["efficacy_magnitude"]
    from modeledit.llm.ability import perplexity

    assert first["ability_unedited"]["perplexity"] == pytest.approx(perplexity(tiny_llama(tok), TEXTS), rel=1e-6)

    out = tmp_path / "killed"
    env = {**os.environ, "MODELEDIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(CHILD), str(out), str(data / "counterfact-val.json"), tok, "3"], env=env)
    deadline = time.time() + 300
    while not (out / "chain" / "00000.safetensors").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    made = (out / "chain" / "00000.safetensors").stat().st_mtime_ns
    assert not (out / "chain" / "00002.safetensors").exists(), "the run was to be killed before its last batch"
    again = run(str(out), str(data / "counterfact-val.json"), tok)
    assert (out / "chain" / "00000.safetensors").stat().st_mtime_ns == made, "a saved batch must not be edited again"
    assert [r["edits"] for r in again["checkpoints"]] == [2, 4, 6]
    for a, b in zip(whole["checkpoints"], again["checkpoints"]):
        assert a["post"] == b["post"] and a["ability"] == b["ability"]
    lines = (out / "checkpoints.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["edits"] for x in lines) == [2, 4, 6]


def test_a_run_with_other_settings_is_refused(data, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    (out).mkdir()
    (out / "run.json").write_text(json.dumps({"protocol": "sequential", "batch_size": 5}))
    with pytest.raises(ModelEditError, match="another configuration"):
        run(str(out), str(data / "counterfact-val.json"), tokenizer.name_or_path)
    assert json.loads((out / "run.json").read_text())["batch_size"] == 5


def test_compare_sequential_draws_the_methods_in_one_plot(data, tokenizer, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import _configs
    from modeledit.compare import compare_sequential
    from modeledit.llm.ability import Ability
    from modeledit.llm.model import LanguageModel

    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    lm = LanguageModel(AutoModelForCausalLM.from_config(_configs(len(tokenizer))["llama"], dtype=torch.float32), tokenizer, "tiny-llama")
    quick = dict(layers=(1, 2), stats_tokens=3000, context_spec=((5, 2),), steps=8)
    from modeledit.llm.bench.counterfact import CounterFact

    calls, score = [], CounterFact.score
    monkeypatch.setattr(CounterFact, "score", lambda self, *a, **k: (calls.append(1), score(self, *a, **k))[1])
    result = compare_sequential(lm, ["memit", "alphaedit"], data / "counterfact-val.json", tmp_path / "cmp", limit=4, batch_size=2,
                                ability=Ability(["A short text to read."]),
                                settings={"memit": quick, "alphaedit": {**quick, "nullspace_threshold": 10.0}})
    assert [[r["edits"] for r in recs] for recs in result["runs"].values()] == [[4], [4]]
    assert (tmp_path / "cmp" / "sequential.png").stat().st_size > 10_000
    assert (tmp_path / "cmp" / "memit" / "chain" / "00001.safetensors").exists()
    # the unedited scores are computed once: 4 cases before, then 4 after the edits for each method
    assert len(calls) == 4 + 4 + 4
    pre = [(tmp_path / "cmp" / m / "pre.jsonl").read_text() for m in ("memit", "alphaedit")]
    assert pre[0] == pre[1]


def test_known_facts_that_the_edits_change_are_not_counted_as_kept(data, monkeypatch):
    """known_1000 and CounterFact share facts: an edited fact answered the new way is not a known fact lost."""
    from modeledit.llm import ability as ab
    from modeledit.llm.bench.counterfact import CounterFact
    from modeledit.llm.trace_many import load_known

    known = load_known(data / "known_1000.json")
    bench = CounterFact()
    edited = [r for c in bench.load(data / "counterfact-train.json", 1000) for r in bench.requests(c)]
    changed = ab.edited_facts(known, edited)
    by_prompt = {f.prompt: f.known_id for f in known}
    # Galatasaray University: located in Istanbul, edited to Slovakia; Tim Tebow's position is another fact
    # than the sport he plays (edited), so it stays counted
    assert by_prompt["The location of Galatasaray University is in the heart of"] in changed
    assert by_prompt["Tim Tebow plays in the position of"] not in changed
    assert len(changed) == 45

    facts = [f for f in known if f.known_id not in changed][:40] + [f for f in known if f.known_id in changed][:2]
    monkeypatch.setattr("modeledit.llm.trace_many.knows", lambda lm, fs: [f.known_id not in changed for f in fs])
    a = ab.Ability(texts=(), known=facts, baseline={"known_ids": [f.known_id for f in facts]})
    monkeypatch.setattr(ab, "perplexity", lambda *args: 1.0)
    assert a.measure(None)["known_retained"] == pytest.approx(40 / 42)  # no edits given: the two count as lost
    out = a.measure(None, edited)
    assert out["known_retained"] == 1.0 and out["known_edited"] == 2
