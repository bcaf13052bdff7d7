"""MEND: the editor's identity start, training (it learns, resumes exactly), the edit as a patch, the
editor's file and the model it belongs to, and bad input. All on tiny random models, seconds each."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import modeledit as me
from modeledit import DataError, Patch, PatchError, RequestError
from modeledit.llm.mend import MEND, edited_weights, nll_per_edit
from modeledit.llm.mend_data import EDIT, build_rows, load_training_cases
from modeledit.llm.mend_editor import FILE, MENDEditor, default_editor_path
from modeledit.llm.mend_step import edit_step
from modeledit.llm import outcome
from modeledit.llm.outcome import record_outcomes
from modeledit.llm.score import score_continuations

from conftest import same_state, state_bytes
from test_methods import REQS, small_pool

QUICK = dict(batch_size=4, val_every=5, val_size=8)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))


def untrained(lm, path):
    """An editor that has seen nothing, saved where ``MEND(editor=path)`` finds it."""
    MENDEditor(edited_weights(lm), meta={"model": lm.name, "model_identity": lm.identity}).save(path / FILE)
    return path


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_untrained_editor_edits_by_the_plain_gradient(tiny_factory, tmp_path, family):
    """Identity networks and no statistics yet: ΔW = −α ∇W of the requests' NLL (GPT-2's Conv1D included),
    for every linear map of the last three MLPs, as low-rank factors; the weights are left as they were."""
    lm = tiny_factory(family)
    before = state_bytes(lm.model)
    patch = me.edit(lm, REQS, method="mend", editor=str(untrained(lm, tmp_path)))
    assert same_state(lm.model, before) and all(p.requires_grad for p in lm.model.parameters())
    weights = edited_weights(lm)
    assert len(weights) == (9 if family == "llama" else 6)  # gate, up, down / c_fc, c_proj of layers 1-3
    assert {w.module.split(".")[-1] for w in weights} == ({"gate_proj", "up_proj", "down_proj"} if family == "llama" else {"c_fc", "c_proj"})
    rows = build_rows(lm, [(i, EDIT, r.text, r.target) for i, r in enumerate(REQS)], len(REQS))  # the EDIT rows: what the gradient is of
    params = [lm.model.get_parameter(w.weight) for w in weights]
    loss, _ = nll_per_edit(lm, lm.run(rows.input_ids, attention_mask=rows.attention_mask)[0], rows, torch.arange(len(REQS)))
    grads = torch.autograd.grad(loss.sum(), params)
    (entry,) = patch.entries
    for w, g, p in zip(weights, grads, params):
        d = entry.deltas[w.weight]
        assert d.rank == int(rows.attention_mask.sum())  # one rank-one term per token, kept as factors
        step = -1e-4 * g
        assert (d.materialize(p) - step).norm() < 1e-5 * step.norm()  # float32 rounding (and the normaliser's ε)


def test_training_lowers_the_held_out_edit_loss(tiny_factory, data, tmp_path):
    """20 steps of training with the paper's settings: the held-out edits' loss after the edit falls well
    below the untrained editor's; the run writes its files, leaves the model alone and installs the editor
    as the model's default."""
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    s = me.train_mend(lm, data / "counterfact-train.json", tmp_path / "run", limit=60, max_steps=20, **QUICK)
    first, best = s["first_validation"], s["best_validation"]
    assert s["val_cases"] == 6 and s["train_cases"] == 54 and s["steps"] == 20
    assert best["step"] > 0 and best["edit"] < first["edit"] - 1.0, (first, best)
    assert best["loc"] < 0.5  # the unrelated prompts still move little
    assert same_state(lm.model, before) and all(p.requires_grad for p in lm.model.parameters())
    for f in ("editor.safetensors", "checkpoint.safetensors", "curve.png", "train.json", "run.json"):
        assert (tmp_path / "run" / f).is_file()
    assert json.loads((tmp_path / "run" / "train.json").read_text())["best_step"] == best["step"]
    assert s["installed"] == str(default_editor_path(lm))
    patch = me.edit(lm, REQS[0], method="mend")  # the installed editor, found by default
    assert patch.entries[0].info["editor"] == str(default_editor_path(lm))


def test_an_interrupted_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tiny_factory, tmp_path):
    lm = tiny_factory("gpt2")
    pool = small_pool(tmp_path / "pool.json")
    kw = dict(max_steps=9, batch_size=2, val_every=4, checkpoint_every=1, lr=1e-3, lr_lr=1e-3)
    whole = me.train_mend(lm, pool, tmp_path / "whole", **kw)

    class Stop(Exception):
        pass

    def stop_at_6(done, total):
        if done == 6:
            raise Stop

    with pytest.raises(Stop):
        me.train_mend(lm, pool, tmp_path / "cut", progress=stop_at_6, **kw)
    seen = []
    resumed = me.train_mend(lm, pool, tmp_path / "cut", progress=lambda d, t: seen.append(d), **kw)
    assert seen == [7, 8, 9]  # no step repeated
    for f in (FILE, "checkpoint.safetensors"):
        a, b = load_file(tmp_path / "whole" / f), load_file(tmp_path / "cut" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert resumed["best_validation"] == whole["best_validation"] and resumed["steps"] == 9
    seen.clear()
    more = me.train_mend(lm, pool, tmp_path / "cut", progress=lambda d, t: seen.append(d), **{**kw, "max_steps": 11})
    assert seen == [10, 11] and more["steps"] == 11  # a finished run given more steps continues
    with pytest.raises(me.ModelEditError, match="another configuration"):
        me.train_mend(lm, pool, tmp_path / "cut", **{**kw, "c_loc": 0.5})


def test_edits_side_by_side_are_single_edits_and_the_patch_scores_as_training_sees_it(tiny_factory, tmp_path):
    """Training edits a batch side by side, each row seeing only its own edit: each edit's losses are those
    it has alone; and its edit loss, computed beside the weights by hooks, is what the method's patch gives."""
    lm = tiny_factory("llama")
    pool = small_pool(tmp_path / "pool.json")
    me.train_mend(lm, pool, tmp_path / "run", max_steps=2, batch_size=2, val_every=1, lr=1e-3, lr_lr=1e-3)
    editor = MENDEditor.load(tmp_path / "run" / FILE)
    cases, _ = load_training_cases(pool)
    together = edit_step(lm, editor, cases[:3], 0.1, 1.0, train=False)
    for i, c in enumerate(cases[:3]):
        alone = edit_step(lm, editor, [c], 0.1, 1.0, train=False)
        assert alone.edit[0] == pytest.approx(together.edit[i], rel=1e-4)
        assert alone.loc[0] == pytest.approx(together.loc[i], rel=1e-3, abs=1e-6)
        patch = MEND(editor=str(tmp_path / "run")).edit(lm, c.request)
        with patch.applied(lm):
            scored = score_continuations(lm, [(p, c.request.target) for p in (c.request.text, *c.paraphrases)])
        assert -sum(s.mean_logprob for s in scored) / len(scored) == pytest.approx(alone.edit[0], rel=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_outcome_check_read_from_the_edits_own_pass_is_the_full_checks(tiny_factory, tmp_path, monkeypatch, family):
    """MEND checks its edit's outcome from the first edited block up, on the hidden states of its own pass
    and with the edit added beside the weights (none written): the same verdicts and probabilities as the
    check that runs the whole patched model; a batch, a request without an old answer, and GPT-2's
    transposed Conv1D weights included."""
    lm = tiny_factory(family)
    pool = small_pool(tmp_path / "pool.json")
    me.train_mend(lm, pool, tmp_path / "run", max_steps=2, batch_size=2, val_every=1, lr=1e-3, lr_lr=1e-3)
    no_old = me.Request("{} is made by", "The Widget", " Acme")
    for batch in ([REQS[0]], [*REQS, no_old]):
        monkeypatch.setattr(outcome, "score_continuations", None)  # the whole model must not run again
        monkeypatch.setattr(Patch, "apply", None)  # nor a weight be written
        patch = MEND(editor=str(tmp_path / "run")).edit(lm, batch)
        monkeypatch.undo()
        own = patch.entries[0].info["per_request"]
        full = record_outcomes(lm, copy.deepcopy(patch), batch).entries[0].info["per_request"]
        assert own["took"] == full["took"] and own["model_continuation"] == full["model_continuation"]
        assert own["target_prob_after"] == pytest.approx(full["target_prob_after"], rel=1e-4)
        olds = [(a, b) for a, b in zip(own["true_prob_after"], full["true_prob_after"]) if a is not None or b is not None]
        assert len(olds) == sum(r.target_true is not None for r in batch) and all(a == pytest.approx(b, rel=1e-4) for a, b in olds)


def test_the_editor_saves_loads_and_refuses_another_model(tiny_factory, tmp_path):
    llama, gpt2 = tiny_factory("llama"), tiny_factory("gpt2")
    with pytest.raises(RequestError, match="modeledit mend train"):  # nothing trained for it yet
        me.edit(llama, REQS[0], method="mend")
    pool = small_pool(tmp_path / "pool.json")
    me.train_mend(llama, pool, tmp_path / "run", max_steps=2, batch_size=2, val_every=1)
    saved = load_file(tmp_path / "run" / FILE)
    again = MENDEditor.load(tmp_path / "run" / FILE)
    assert all(torch.equal(saved[k], v) for k, v in again.state_dict().items())
    assert again.meta["model_identity"] == llama.identity and again.meta["data"]["form"] == "counterfact"
    one = me.edit(llama, REQS, method="mend", editor=str(tmp_path / "run"))
    two = me.edit(llama, REQS, method="mend", editor=str(tmp_path / "run" / FILE))
    assert one.entries[0].after == two.entries[0].after
    before = state_bytes(gpt2.model)
    with pytest.raises(RequestError, match="trained for another model"):
        me.edit(gpt2, REQS, method="mend", editor=str(tmp_path / "run"))
    assert same_state(gpt2.model, before)
    with pytest.raises(RequestError, match="no MEND editor"):
        me.edit(llama, REQS, method="mend", editor=str(tmp_path / "nowhere"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PatchError):
        me.edit(llama, REQS, method="mend", editor=str(tmp_path / "bad.safetensors"))


def test_bad_training_input_is_one_clear_error(tiny_factory, tmp_path):
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    pool = small_pool(tmp_path / "pool.json")
    (tmp_path / "numbers.json").write_text("[1, 2, 3]")
    (tmp_path / "other.json").write_text(json.dumps([{"known_id": 0, "subject": "X", "prompt": "X is"}]))
    with pytest.raises(DataError, match="neither CounterFact"):
        me.train_mend(lm, tmp_path / "other.json", tmp_path / "o1")
    with pytest.raises(DataError, match="neither CounterFact"):
        me.train_mend(lm, tmp_path / "numbers.json", tmp_path / "o2")
    with pytest.raises(DataError, match="no training file"):
        me.train_mend(lm, tmp_path / "missing.json", tmp_path / "o3")
    with pytest.raises(DataError, match="too few to split"):
        me.train_mend(lm, pool, tmp_path / "o4", limit=1)
    with pytest.raises(DataError, match="record 0"):  # a CounterFact file with a broken record
        (tmp_path / "broken.json").write_text(json.dumps([{"case_id": 0, "prompt": "X is", "target_new": "Y"}]))
        me.train_mend(lm, tmp_path / "broken.json", tmp_path / "o5")
    with pytest.raises(RequestError, match="not an MLP projection"):
        me.train_mend(lm, pool, tmp_path / "o6", modules=("model.layers.3.self_attn.q_proj",), max_steps=1)
    with pytest.raises(RequestError, match="layers"):
        me.train_mend(lm, pool, tmp_path / "o7", layers=(2, 9), max_steps=1)
    with pytest.raises(RequestError, match="lr"):
        me.train_mend(lm, pool, tmp_path / "o8", lr=-1.0)
    with pytest.raises(RequestError, match="MENDTrainConfig"):
        me.train_mend(lm, pool, tmp_path / "o9", learning_rate=1.0)
    with pytest.raises(RequestError, match="of the chosen layers"):
        me.train_mend(lm, pool, tmp_path / "o10", layers=(3,), modules=("model.layers.0.mlp.down_proj",), max_steps=1)
    # one MLP projection of any layer: fine
    s = me.train_mend(lm, pool, tmp_path / "ok", modules=("model.layers.0.mlp.down_proj",), max_steps=1, batch_size=2)
    assert [w.module for w in MENDEditor.load(s["editor"]).weights] == ["model.layers.0.mlp.down_proj"]
    assert same_state(lm.model, before)


def test_zsre_records_that_make_no_edit_are_left_out(data, caplog):
    """zsRE's training file has records with an empty new answer (534 among 530-539): left out, said."""
    cases, form = load_training_cases(data / "zsre-train-1k.json", skip=530, limit=10)
    assert form == "zsre" and [c.case_id for c in cases] == [530, 531, 532, 533, 535, 536, 537, 538, 539]
    assert "record 534" in caplog.text
    c = cases[0]
    assert c.paraphrases and c.locality[0][0].endswith("?") and c.request.target.startswith(" ")


def test_the_command_trains_and_refuses_bad_input(tiny_factory, tmp_path):
    from modeledit.cli import app

    lm = tiny_factory("llama")
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    pool = small_pool(tmp_path / "pool.json")
    runner = CliRunner()
    args = ["mend", "train", "--model", str(tmp_path / "model"), "--data", pool, "--out", str(tmp_path / "run")]
    r = runner.invoke(app, args + ["--steps", "2", "--set", "batch_size=2", "--set", "val_every=1"])
    assert r.exit_code == 0, r.output
    assert "held-out edits" in r.output and (tmp_path / "run" / "curve.png").is_file()
    r = runner.invoke(app, args + ["--set", "nope=1"])
    assert r.exit_code == 2 and "no field 'nope'" in r.output
    (tmp_path / "numbers.json").write_text("[1, 2]")
    r = runner.invoke(app, ["mend", "train", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "numbers.json"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "neither CounterFact" in r.output
