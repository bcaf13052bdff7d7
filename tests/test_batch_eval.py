"""The one evaluation loop at batch sizes above 1, zsRE, the comparison, and the batch CLI."""

import json

import pytest
from typer.testing import CliRunner

from modeledit import DataError, evaluate
from modeledit.cli import app
from modeledit.llm.bench.counterfact import CounterFact, load_counterfact
from modeledit.llm.bench.zsre import load_zsre, ZsRE
from modeledit.llm.score import score_continuations

from conftest import same_state, state_bytes

def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


FAST_MEMIT = dict(layers=(1, 2), stats_tokens=2000, context_spec=((5, 2),), steps=3)


def test_cases_are_edited_in_batches_and_an_interrupted_batch_resumes(tiny_factory, data, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    out = tmp_path / "run"
    from modeledit.llm.memit import MEMIT

    seen = []
    real = MEMIT.edit_batch

    def spy(self, lm_, reqs, progress=None):
        seen.append([r.subject for r in reqs])
        return real(self, lm_, reqs, progress)

    monkeypatch.setattr(MEMIT, "edit_batch", spy)
    cases = load_counterfact(data / "counterfact-val.json", 5)
    # interrupt while the second batch's cases are being written
    from modeledit.report import CaseLog

    real_write = CaseLog.write
    writes = {"n": 0}

    def flaky_write(self, record):
        writes["n"] += 1
        if writes["n"] == 4:
            raise KeyboardInterrupt
        return real_write(self, record)

    monkeypatch.setattr(CaseLog, "write", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        evaluate(lm, data / "counterfact-val.json", out, method="memit", limit=5, batch_size=2, gen_tokens=0, **FAST_MEMIT)
    assert same_state(lm.model, before), "an interrupted evaluation leaves the weights as they were"
    monkeypatch.setattr(CaseLog, "write", real_write)
    summary = evaluate(lm, data / "counterfact-val.json", out, method="memit", limit=5, batch_size=2, gen_tokens=0, **FAST_MEMIT)
    subjects = [c.request.subject for c in cases]
    # batch 0, batch 1 (cut short, edited again with the same two requests), batch 1 again, batch 2 (one case)
    assert seen == [subjects[0:2], subjects[2:4], subjects[2:4], subjects[4:5]]
    records = [json.loads(l) for l in (out / "cases.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in records] == [c.case_id for c in cases], "each case exactly once, in order"
    assert [r["batch"] for r in records] == [0, 0, 1, 1, 2]
    assert records[0]["batch_seconds"] == records[1]["batch_seconds"]
    assert records[0]["seconds"] == pytest.approx(records[0]["batch_seconds"] / 2)
    assert records[0]["edit"][0]["layers"] == [1, 2] and isinstance(records[0]["edit"][0]["gradient_steps"], int)
    assert summary["n"] == 5 and summary["batch_size"] == 2 and summary["answer_comparison"] == "mean"
    assert "batches of 2" in summary["protocol"]
    run = json.loads((out / "run.json").read_text())
    assert run["batch_size"] == 2 and "value_batch" not in run["hparams"], "speed-only settings are not part of a run's identity"
    with pytest.raises(Exception, match="another configuration"):
        evaluate(lm, data / "counterfact-val.json", out, method="memit", limit=5, batch_size=1, gen_tokens=0, **FAST_MEMIT)
    assert same_state(lm.model, before)


def test_a_case_is_scored_with_its_whole_batch_applied(tiny_factory, data, tmp_path, monkeypatch):
    """post of each case = the score with the batch's joint edit applied (checked against a direct edit)."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    from modeledit import edit

    lm = tiny_factory("llama")
    settings = dict(layers=(1,), lr=1e-2)
    summary = evaluate(lm, data / "counterfact-val.json", tmp_path / "run", method="ft-m", limit=2, batch_size=2, gen_tokens=0, **settings)
    cases = load_counterfact(data / "counterfact-val.json", 2)
    patch = edit(lm, [c.request for c in cases], method="ft-m", **settings)
    bench = CounterFact(gen_tokens=0)
    with patch.applied(lm):
        direct = [bench.score(lm, c) for c in cases]
    records = [json.loads(l) for l in (tmp_path / "run" / "cases.jsonl").read_text().splitlines()]
    for r, d in zip(records, direct):
        assert r["post"]["efficacy_magnitude"] == pytest.approx(d["efficacy_magnitude"], abs=1e-6)
    assert summary["post"]["efficacy_magnitude"] == pytest.approx(100 * sum(d["efficacy_magnitude"] for d in direct) / 2, abs=1e-4)
    assert "generation_entropy" not in summary["post"]  # not measured without --gen-tokens: left out, not NaN
    assert summary["edits_not_taken"] == sum(1 for r in records for e in r["edit"] if e["took"] is False)


def test_one_case_batches_computed_side_by_side_equal_one_by_one(tiny_factory, tmp_path, monkeypatch):
    """ROME at batch size 1: the loop computes 16 cases' edits side by side (edit_each); each case's
    record is what editing it alone gives."""
    from modeledit import get_method
    from test_sweep import CASES

    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    f = tmp_path / "cf.json"
    f.write_text(json.dumps(CASES * 2))  # four cases (ids repeat: give them new ones)
    records = json.loads(f.read_text())
    for i, r in enumerate(records):
        r["case_id"] = i
    f.write_text(json.dumps(records))
    settings = dict(layer=1, stats_tokens=3000, context_spec=((5, 2),), steps=4)
    side = evaluate(lm, f, tmp_path / "side", method=get_method("rome", **settings))
    alone_method = get_method("rome", **settings)
    alone_method.edit_each = None  # the loop then edits each case on its own
    alone = evaluate(lm, f, tmp_path / "alone", method=alone_method)
    a = [json.loads(x) for x in (tmp_path / "side" / "cases.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "alone" / "cases.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in a] == [r["case_id"] for r in b] == [0, 1, 2, 3]
    for x, y in zip(a, b):
        for k, v in y["post"].items():
            if isinstance(v, float):
                assert x["post"][k] == pytest.approx(v, abs=1e-3), k
        assert x["edit"][0]["took"] == y["edit"][0]["took"]
    assert side["post"]["efficacy_score"] == alone["post"]["efficacy_score"]
    assert len({r["seconds"] for r in a}) == 1 and len({r["seconds"] for r in b}) == 4  # one shared time: side by side


def test_counterfact_compares_token_mean_log_probabilities_by_default(tiny_factory, tmp_path):
    """'mean' (the papers') and 'sum' differ exactly where answers of different lengths are compared."""
    lm = tiny_factory("llama")
    f = tmp_path / "cf.json"
    f.write_text(json.dumps([{"case_id": 1, "prompt": "The Statue of Liberty is in", "subject": "The Statue of Liberty",
                              "target_new": "New York City of America", "ground_truth": "Rome",
                              "rephrase_prompt": "The Statue of Liberty stands in", "locality_prompt": "The Colosseum is in",
                              "locality_ground_truth": "Rome"}]))
    (case,) = load_counterfact(f)
    new, true = score_continuations(lm, [(case.request.text, case.request.target), (case.request.text, case.request.target_true)])
    assert new.n_tokens > true.n_tokens
    mean = CounterFact(gen_tokens=0).score(lm, case)
    total = CounterFact(gen_tokens=0, compare="sum").score(lm, case)
    assert mean["efficacy_score"] == float(new.mean_logprob > true.mean_logprob)
    assert total["efficacy_score"] == float(new.logprob > true.logprob)


def test_zsre_loads_and_scores_as_defined(tiny_factory, data):
    lm = tiny_factory("llama")
    cases = load_zsre(data / "zsre-train-1k.json", 3)
    c = cases[0]
    assert c.request.subject == "UniFirst" and c.request.text == "What is the product made by UniFirst?"
    assert c.request.target == " unmanned aircraft" and c.request.target_true == " uniform"
    assert c.loc_answer == " Walter Sobchak"
    bench = ZsRE()
    pre = bench.score(lm, c)
    (eff,) = score_continuations(lm, [(c.request.text, c.request.target)])
    assert pre["efficacy"] == sum(a == b for a, b in zip(eff.tokens, eff.top1)) / eff.n_tokens
    assert pre["specificity"] == 1.0  # the unedited model agrees with itself
    other = dict(pre, loc_top1=[-1] * len(pre["loc_top1"]))
    assert bench.score(lm, c, other)["specificity"] == 0.0
    summary = bench.summarize([{"pre": pre, "post": pre}])
    assert set(summary["post"]) == {"efficacy", "paraphrase", "specificity", "locality_accuracy"}


def test_zsre_bad_records_are_clear_errors(tmp_path):
    f = tmp_path / "z.json"
    f.write_text(json.dumps([{"subject": "X", "src": "What is Y?", "alt": "a", "answers": ["b"], "rephrase": "r", "loc": "l", "loc_ans": "m"}]))
    with pytest.raises(DataError, match="record 0"):
        load_zsre(f)
    f.write_text(json.dumps([{"subject": "X"}]))
    with pytest.raises(DataError, match="MEND's format"):
        load_zsre(f)


def test_zsre_evaluation_runs_through_the_same_loop(tiny_factory, data, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    s = evaluate(lm, data / "zsre-train-1k.json", tmp_path / "z", benchmark="zsre", method="lora", limit=2, batch_size=2, layers=(1, 2))
    assert s["benchmark"] == "zsre" and s["n"] == 2 and s["pre"]["specificity"] == 100.0
    assert s["post"]["efficacy"] > s["pre"]["efficacy"]  # LoRA on its own targets


def test_compare_writes_the_table_the_json_and_the_chart(tiny_factory, data, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    from modeledit.api import compare

    lm = tiny_factory("llama")
    out = tmp_path / "cmp"
    result = compare(lm, ["ft-m", "memit@2"], data / "counterfact-val.json", out, limit=2, gen_tokens=4,
                     settings={"ft-m": {"layers": (1,)}, "memit": FAST_MEMIT})
    assert [r["method"] for r in result["rows"]] == ["unedited", "ft-m", "memit@2"]
    assert result["rows"][2]["batch_size"] == 2 and result["rows"][0]["seconds_per_edit"] is None
    md = (out / "comparison.md").read_text()
    assert "| unedited |" in md and "| memit@2 |" in md and "ES | PS | NS | NK | S" in md
    on_disk = json.loads((out / "comparison.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(result["rows"]))
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "ft-m" / "summary.json").exists() and (out / "memit@2" / "summary.json").exists()
    from modeledit import RequestError

    with pytest.raises(RequestError, match="unknown method"):
        compare(lm, ["rome", "nope"], data / "counterfact-val.json", out, limit=2)
    with pytest.raises(RequestError, match="language models"):
        compare(lm, ["enn"], data / "counterfact-val.json", out, limit=2)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "nope=1"], "no field 'nope'"),
        (["--set", "steps=many"], "steps='many'"),
        (["--method", "lora", "--set", "rank=100000"], "rank"),
        (["--method", "memit", "--set", "layers=28,31"], "layers"),
    ],
)
def test_cli_bad_settings_are_one_clear_error(smollm2, args, words):
    base = ["edit", "--prompt", "{} is in", "--subject", "The Eiffel Tower", "--target", " Rome"]
    r = CliRunner().invoke(app, [*base, *args])
    assert r.exit_code == 2, r.output
    assert words in flat(r.output)


def test_cli_requests_files(smollm2, tmp_path):
    runner = CliRunner()
    f = tmp_path / "r.json"
    f.write_text(json.dumps([{"prompt": "{} is in", "subject": "Paris", "target": " Rome"},
                             {"prompt": "Paris is in", "subject": "Paris", "target": " London"}]))
    r = runner.invoke(app, ["edit", "--requests", str(f), "--method", "ft-m"])
    assert r.exit_code == 2 and "' Rome' and ' London'" in flat(r.output)
    f.write_text("[]")
    r = runner.invoke(app, ["edit", "--requests", str(f)])
    assert r.exit_code == 2 and "JSON list" in flat(r.output)
    r = runner.invoke(app, ["edit", "--requests", str(f), "--prompt", "{} is", "--subject", "X", "--target", " Y"])
    assert r.exit_code == 2 and "not both" in flat(r.output)


@pytest.mark.slow
def test_cli_edits_a_file_of_requests_with_a_joint_method(smollm2, data, tmp_path):
    """CounterFact's short form as a requests file, FT-M on the batch: the new answers win, nothing else moves."""
    before = state_bytes(smollm2.model)
    records = json.loads((data / "counterfact-val.json").read_text())[:3]
    f = tmp_path / "r.json"
    f.write_text(json.dumps(records))
    out = tmp_path / "p.safetensors"
    r = CliRunner().invoke(app, ["edit", "--requests", str(f), "--method", "ft-m", "--save", str(out)])
    assert "for 3 of 3 request(s)" in flat(r.output)
    from modeledit import Patch
    from modeledit.llm.outcome import not_taken

    p = Patch.load(out)
    # FT-M's 25 steps leave 'BBC One, by' → ' Sega' ahead of ' BBC' but not yet greedy: said, status 3
    missed = not_taken(p)
    assert [m[0]["subject"] for m in missed] == ["BBC One"]
    assert r.exit_code == 3 and "1 of 3 edits did not take" in flat(r.output), r.output
    assert len(p.requests) == 3 and p.entries[0].method == "ft-m"
    assert same_state(smollm2.model, before)
