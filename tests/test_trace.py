"""Causal tracing: the restorations' arithmetic on tiny models of every family, bad input, the real
SmolLM2 trace, the many-facts aggregate with resume, and the layer choice that ROME then uses."""

import json

import pytest
import torch
from typer.testing import CliRunner

from modeledit import RequestError
from modeledit.cli import app
from modeledit.llm.trace import trace
from modeledit.llm.trace_engine import CausalTracer, Restore, TraceConfig, default_window, window_layers
from modeledit.llm.trace_prompt import prepare_prompt

from conftest import FAMILIES

PROMPT, SUBJECT = "The famous {} is located in the city of", "Eiffel Tower"


def _tracer(lm, cut=True):
    tp = prepare_prompt(lm, PROMPT, SUBJECT, " Paris")
    tracer = CausalTracer(lm, tp, noise=1.5, config=TraceConfig(samples=4))
    tracer.can_cut = tracer.can_cut and cut
    return tp, tracer


@pytest.mark.parametrize("family", FAMILIES)
def test_restoring_everything_or_nothing_gives_the_clean_or_corrupted_probability(tiny_factory, family):
    lm = tiny_factory(family)
    tp, tracer = _tracer(lm)
    L, every = lm.layout.n_layers, tuple(range(tp.n_prompt))
    assert tracer.corrupted_prob != pytest.approx(tracer.clean_prob, rel=1e-3)  # the noise does something
    got = tracer.probs([
        Restore("hidden", (L - 1,), every),  # every hidden state at the last layer
        Restore("hidden", (0,), every),  # at the first layer: everything above is clean again
        Restore("hidden", (0,), ()),  # nothing, from the embeddings up (noise added)
        Restore("mlp", (2,), ()),  # nothing, from the corrupted run's layer-1 output up
    ])
    assert got[0] == pytest.approx(tracer.clean_prob, rel=1e-5, abs=1e-9)
    assert got[1] == pytest.approx(tracer.clean_prob, rel=1e-5, abs=1e-9)
    assert got[2] == pytest.approx(tracer.corrupted_prob, rel=1e-5, abs=1e-9)
    assert got[3] == pytest.approx(tracer.corrupted_prob, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fast_sweeps_equal_one_full_pass_per_restoration(tiny_factory, family):
    """Skipped layers, the cached prefix, the pre-subject shortcut and the batching change no result."""
    lm = tiny_factory(family)
    tp, tracer = _tracer(lm)
    assert tracer.can_cut == (family != "gemma3")  # the tiny Gemma's sliding window (8) is shorter than the prompt
    L = lm.layout.n_layers
    rs = [Restore(k, window_layers(layer, 2, L), (t,)) for k in ("hidden", "mlp", "attn") for layer in range(L)
          for t in range(tp.n_prompt)]
    slow = [tracer._run_chunk([r], start=0, t0=0)[0] for r in rs]  # from the embeddings, every token
    assert tracer.probs(rs) == pytest.approx(slow, rel=1e-4, abs=1e-9)


def test_bfloat16_sweeps_stay_close_to_float32_ones(tiny_factory):
    lm = tiny_factory("llama")
    tp = prepare_prompt(lm, PROMPT, SUBJECT, " Paris")
    L = lm.layout.n_layers
    rs = [Restore("hidden", (layer,), (t,)) for layer in range(L) for t in range(tp.n_prompt)]
    exact = CausalTracer(lm, tp, noise=1.5, config=TraceConfig(samples=4)).probs(rs)
    fast = CausalTracer(lm, tp, noise=1.5, config=TraceConfig(samples=4, precision="bfloat16")).probs(rs)
    assert fast != exact  # autocast is really on
    assert fast == pytest.approx(exact, rel=0.05, abs=1e-3)
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())  # the weights are not cast
    with pytest.raises(RequestError, match="precision"):
        TraceConfig(precision="fp8")


def test_tokens_before_the_subject_are_not_touched_by_the_noise(tiny_factory):
    lm = tiny_factory("llama")
    tp, tracer = _tracer(lm)
    assert tp.subject_span[0] >= 2  # 'The famous' comes first
    for t in range(tp.subject_span[0]):
        computed = tracer._run_chunk([Restore("hidden", (1,), (t,))], start=1, t0=0)[0]
        assert computed == pytest.approx(tracer.corrupted_prob, rel=1e-5)  # what probs() returns unrun
        assert tracer.probs([Restore("hidden", (1,), (t,))]) == [tracer.corrupted_prob]


def test_a_trace_has_one_row_per_token_and_one_column_per_layer(tiny_factory, tmp_path):
    from modeledit.api import trace as api_trace

    lm = tiny_factory("qwen2")
    r = api_trace(lm, PROMPT, SUBJECT, " Paris", tmp_path, samples=3, noise=1.0)
    L = lm.layout.n_layers
    assert r.window == default_window(L) == 1 and window_layers(2, 6, 30) == (0, 1, 2, 3, 4)
    assert r.tokens[r.subject_span[0]] == " E" and len(r.rows) == len(r.tokens)
    for grid in r.grids.values():
        assert len(grid) == len(r.tokens) and all(len(row) == L for row in grid)
    # the last token's last hidden state decides a one-token answer alone
    assert r.grids["hidden"][-1][L - 1] == pytest.approx(r.clean_prob, rel=1e-5)
    saved = json.loads((tmp_path / "trace.json").read_text())
    assert saved["clean_prob"] == r.clean_prob and saved["noise"] == 1.0 and set(saved["strongest"]) == {"hidden", "mlp", "attn"}
    assert {"token", "layer", "prob", "indirect_effect"} <= set(saved["strongest"]["mlp"])
    for kind in ("hidden", "mlp", "attn"):
        png = tmp_path / f"trace_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bad_trace_input_is_a_clear_error(tiny_factory):
    lm = tiny_factory("gpt2")  # a context of 256 positions
    with pytest.raises(RequestError, match="does not occur in the prompt"):
        prepare_prompt(lm, "The Louvre is located in the city of", "Eiffel Tower")
    with pytest.raises(RequestError, match="longer than the model's context of 256"):
        prepare_prompt(lm, "{} is" + " very" * 300 + " far from", "Paris", " Rome")
    with pytest.raises(RequestError, match="target"):
        prepare_prompt(lm, PROMPT, SUBJECT, "  ")
    with pytest.raises(RequestError, match="samples"):
        TraceConfig(samples=0)
    # a target the model does not predict is traced anyway, and said so
    r = trace(lm, PROMPT, SUBJECT, " Paris", TraceConfig(samples=2, noise=1.0), kinds=("hidden",), rows=[4])
    assert not r.predicted and r.prediction != " Paris" and r.target == " Paris"


def test_cli_refuses_a_subject_not_in_the_prompt_before_loading_anything(tmp_path):
    r = CliRunner().invoke(app, ["trace", "--prompt", "The Louvre is in", "--subject", "Eiffel Tower", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "does not occur in the prompt" in r.output
    assert not list(tmp_path.iterdir())


def test_smollm2_recalls_the_eiffel_tower_through_its_subject_tokens(smollm2):
    r = trace(smollm2, "The Eiffel Tower is located in the city of", "The Eiffel Tower", None, kinds=("hidden",))
    L = smollm2.layout.n_layers
    assert r.target == " Paris" and r.predicted and r.clean_prob > 0.5 and r.corrupted_prob < 0.1
    grid = torch.tensor(r.grids["hidden"])
    assert grid[-1, L - 1] == pytest.approx(r.clean_prob, rel=1e-5)
    subject_rows = grid[r.subject_span[0] : r.subject_span[1], : L // 2]
    other_rows = grid[r.subject_span[1] : -1, : L // 2]
    # early layers: only restoring a subject token brings Paris back
    assert subject_rows.max() - r.corrupted_prob > 0.2 and other_rows.max() - r.corrupted_prob < 0.05


def test_trace_many_resumes_aggregates_and_sets_rome_s_layer(smollm2, data, tmp_path, monkeypatch):
    from modeledit.api import trace_facts
    from modeledit.llm.rome import ROME, default_layer

    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))  # layer choices land here
    from modeledit.llm.packaged import PACKAGED

    assert default_layer(smollm2) == PACKAGED["smollm2-135m"].edit_layer and default_layer(smollm2)[0] == 5  # its sweep's
    out = tmp_path / "many"
    cfg = dict(samples=3)
    first = trace_facts(smollm2, data / "known_1000.json", out, limit=1, **cfg)
    assert first["n_traced"] == 1
    lines = (out / "cases.jsonl").read_text().splitlines()
    with open(out / "cases.jsonl", "a") as f:
        f.write(lines[-1][: len(lines[-1]) // 2])  # a record torn by a crash
    agg = trace_facts(smollm2, data / "known_1000.json", out, limit=2, set_layer=True, **cfg)
    records = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
    ids = [r["known_id"] for r in records]
    assert len(ids) == len(set(ids)) and records[: len(lines)] == [json.loads(x) for x in lines]
    assert agg["n_traced"] == 2 == sum(r["known"] for r in records) and agg["facts_checked"] == len(records)
    for where in ("subject_last", "last"):
        assert all(len(agg[where][k]) == 30 for k in ("hidden", "mlp", "attn"))
    assert (out / "aggregate.png").stat().st_size > 10_000
    layer, reason = default_layer(smollm2)
    assert layer == agg["mlp_peak_layer"] and reason.startswith("causal tracing")
    assert ROME().layer(smollm2) == layer and ROME(layer=3).layer_reason(smollm2) == "chosen by the user"
    with pytest.raises(Exception, match="another configuration"):
        trace_facts(smollm2, data / "known_1000.json", out, limit=2, samples=5)
