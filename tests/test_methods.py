"""Every registered LM method through one conformance check, and the batch interface's rules."""

import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import modeledit as me
from modeledit import Patch, Request, RequestError, edit, get_method, list_methods, load_edit
from modeledit.llm.method import as_requests, parse_settings
from modeledit.methods import METHODS, method_class
from modeledit.llm.score import score_continuations

from conftest import same_state, state_bytes

REQS = [
    Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris"),
    Request("{} plays the sport of", "Michael Jordan", " chess", " basketball"),
]
# quick settings for a tiny random model; every registered LM method must pass with these (or its defaults)
QUICK = {
    "rome": dict(layer=1, stats_tokens=3000, context_spec=((5, 2),), steps=8),
    "memit": dict(layers=(1, 2), stats_tokens=3000, context_spec=((5, 2),), steps=8),
    "alphaedit": dict(layers=(1, 2), stats_tokens=3000, context_spec=((5, 2),), steps=8, nullspace_threshold=10.0),
    "ft-l": dict(layers=(1,)),
    "ft-m": dict(layers=(1,)),
    "lora": dict(layers=(1, 2)),
    "ike": dict(k=8),  # and a small pool written by the test (small_pool)
    "mello": dict(max_hops=2),  # and a small prompt written by the test (mello_prompt)
    "grace": dict(layers=(1,)),
    "mend": dict(),  # and an editor trained for a few steps by the test (mend_editor)
}

MELLO_PROMPT = """Question: What is the capital city of the country of citizenship of Ivanka Trump's spouse?
Subquestion: Who is Ivanka Trump's spouse?
Generated answer: Ivanka Trump's spouse is Jared Kushner.
Retrieved fact: Jared Kushner is a citizen of Canada.
Retrieved fact does not contradict to generated answer, so the intermediate answer is: Jared Kushner
Subquestion: What is the country of citizenship of Jared Kushner?
Generated answer: The country of citizenship of Jared Kushner is United States.
Retrieved fact: Jared Kushner is a citizen of Canada.
Retrieved fact contradicts to generated answer, so the intermediate answer is: Canada
Subquestion: What is the capital city of Canada?
Generated answer: The capital city of Canada is Ottawa.
Retrieved fact: Ivanka Trump is married to Jared Kushner.
Retrieved fact does not contradict to generated answer, so the intermediate answer is: Ottawa
Final answer: Ottawa
"""


def mello_prompt(path):
    """A MeLLo prompt of one example (the paper's format)."""
    path.write_text(MELLO_PROMPT)
    return str(path)


def small_pool(path):
    """A CounterFact file (short form) of 6 cases: IKE's demonstration pool in tests."""
    import json

    facts = [("{} is located in the city of", "Big Ben", "Berlin", "London", "The Tower of London is in the city of"),
             ("{} plays the sport of", "Serena Williams", "golf", "tennis", "Roger Federer plays the sport of"),
             ("{} was written in", "Faust", "French", "German", "The Magic Mountain was written in"),
             ("The capital of {} is", "France", "Lyon", "Paris", "The capital of the French Republic is"),
             ("{} is a product of", "iPhone", "Nokia", "Apple", "The MacBook is a product of"),
             ("{} speaks the language", "Angela Merkel", "Spanish", "German", "Olaf Scholz speaks the language")]
    records = [{"case_id": i, "prompt": p.replace("{}", s), "subject": s, "target_new": new, "ground_truth": true,
                "rephrase_prompt": "In other words, " + p.replace("{}", s), "locality_prompt": loc, "locality_ground_truth": true}
               for i, (p, s, new, true, loc) in enumerate(facts)]
    path.write_text(json.dumps(records))
    return str(path)


def mend_editor(lm, tmp_path):
    """A MEND editor for ``lm``, trained for a few steps on the small pool (MEND edits with a trained editor)."""
    me.train_mend(lm, small_pool(tmp_path / "mend-pool.json"), tmp_path / "mend", max_steps=2, batch_size=2, val_every=1)
    return str(tmp_path / "mend")


def quick(name, tmp_path, lm=None):
    files = {"ike": lambda: {"pool": small_pool(tmp_path / "pool.json")}, "mello": lambda: {"prompt": mello_prompt(tmp_path / "mello.txt")},
             "mend": lambda: {"editor": mend_editor(lm, tmp_path)}}
    return {**QUICK.get(name, {}), **files.get(name, dict)()}


def _mean_target_logprob(lm, reqs):
    return sum(c.mean_logprob for c in score_continuations(lm, [(r.text, r.target) for r in reqs])) / len(reqs)


def test_the_registry_knows_each_family():
    assert set(list_methods("llm")) == {"rome", "memit", "alphaedit", "grace", "ft-l", "ft-m", "lora", "ike", "mello", "mend"}
    assert list_methods("classifier") == ["enn"]
    assert set(list_methods("diffusion")) == {"repaint", "imagic"}
    for name in list_methods("llm"):
        m = get_method(name)
        assert m.family == "llm" and isinstance(m.joint, bool)
    for name in list_methods():  # the registry's family and name (it lists without importing) are the class's own
        cls = method_class(name)
        assert (cls.name, cls.family) == (name, METHODS[name][2])
    assert get_method("memit").joint and not get_method("rome").joint


def test_listing_methods_and_building_the_cli_import_no_torch():
    """`modeledit --help` and the browser page come up without torch (the model's load imports it, after the page is up)."""
    code = ("import sys, modeledit.cli, modeledit.ui.app as a, modeledit.ui.workspace as w; ws = w.Workspace(['smollm2-135m']); "
            "a.build_app(ws); ws.close(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("name", list_methods("llm"))
def test_every_lm_method_conforms(tiny_factory, tmp_path, monkeypatch, name):
    """edit a batch -> weights untouched; apply -> only the edit's parameters change and the targets gain
    (an edit that changes no weight: a codebook (GRACE) raises the targets with every weight as it was; a
    context (IKE, MeLLo) gives the same scores as the context written out before the prompt); revert ->
    bit-exact weights and the same outputs; save/load -> the same edit, applying to the same weights."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    method = get_method(name, **quick(name, tmp_path, lm))
    method.prepare(lm)
    patch = method.edit(lm, REQS)
    kind = "weights" if isinstance(patch, Patch) else patch.kind
    assert same_state(lm.model, before), "edit() must leave the weights as they were"
    assert [Request.from_dict(r) for r in patch.requests] == REQS
    assert all(p.requires_grad for p in lm.model.parameters()), "gradients must be switched back on"
    lp0 = _mean_target_logprob(lm, REQS)
    with patch.applied(lm):
        lp1 = _mean_target_logprob(lm, REQS)
        now = lm.model.state_dict()
        changed = {k for k in before if not torch.equal(now[k], before[k])}
        edited = {k: v.clone() for k, v in now.items()}
        if kind in ("context", "memory"):
            contexts = patch.prefixes([r.text for r in REQS])
    assert changed <= set(patch.parameters) and bool(changed) == (kind == "weights")
    if kind in ("weights", "codebook"):
        assert lp1 > lp0 + 1e-3, f"{name}: the targets' log-probability did not rise ({lp0:.4f} -> {lp1:.4f})"
    else:
        written = _mean_target_logprob(lm, [Request.from_text(c + " " + r.text, r.subject, r.target) for c, r in zip(contexts, REQS)])
        assert abs(written - lp1) < 1e-4
    assert same_state(lm.model, before), "revert must restore the exact bytes"
    assert _mean_target_logprob(lm, REQS) == lp0 and not lm.codebooks and lm.context is None, "revert must restore the outputs"
    f = patch.save(tmp_path / ("p.json" if kind in ("context", "memory") else "p.safetensors"))
    again = load_edit(f)
    assert type(again) is type(patch) and again.requests == patch.requests and again.parameters == patch.parameters
    assert [e.method for e in again.entries] == [e.method for e in patch.entries]
    with again.applied(lm):
        assert same_state(lm.model, edited)
        assert abs(_mean_target_logprob(lm, REQS) - lp1) < 1e-5
    assert same_state(lm.model, before)
    for e in patch.entries:
        assert e.info["gradient_steps"] >= (0 if kind in ("context", "memory") else 1)


def test_a_method_that_edits_one_at_a_time_composes_its_edits(tiny_factory, tmp_path, monkeypatch):
    """ROME on a batch: the second edit is computed on the model holding the first."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    rome = get_method("rome", **QUICK["rome"])
    both = rome.edit(lm, REQS)
    assert len(both.entries) == 2
    first = rome.edit(lm, REQS[0])
    with first.applied(lm):
        second = rome.edit(lm, REQS[1])
    for a, b in zip(both.entries, first.entries + second.entries):
        assert a.before == b.before and a.after == b.after


def test_bad_batches_are_refused_and_nothing_changes(tiny_factory):
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    with pytest.raises(RequestError, match="empty"):
        edit(lm, [], method="memit")
    clash = [REQS[0], Request("{} is located in the city of", "The Eiffel Tower", " London")]
    with pytest.raises(RequestError, match="' Rome' and ' London'"):
        edit(lm, clash, method="memit")
    assert as_requests([REQS[0], REQS[0]]) == [REQS[0], REQS[0]]  # the same target twice is no conflict
    with pytest.raises(RequestError, match="layers"):
        edit(lm, REQS, method="memit", layers=(2, 7))
    with pytest.raises(RequestError, match="layers"):
        edit(lm, REQS, method="ft-m", layers=(9,))
    with pytest.raises(RequestError, match="rank"):
        edit(lm, REQS, method="lora", rank=100)  # the tiny model's MLP is 64 -> 32
    assert same_state(lm.model, before)


def test_memit_solves_its_least_squares_problem():
    from modeledit.llm.memit import memit_update

    torch.manual_seed(0)
    n, d_in, d_out, lam = 5, 12, 7, 3.0
    keys, resid = torch.randn(n, d_in, dtype=torch.float64), torch.randn(n, d_out, dtype=torch.float64)
    A0 = torch.randn(d_in, d_in, dtype=torch.float64)
    C = A0 @ A0.T / d_in + 0.1 * torch.eye(d_in, dtype=torch.float64)
    R, A = memit_update(resid, keys, C, lam)
    dW = R @ A.T  # (out, in)
    # the normal equations of min Σ‖ΔW kᵢ − rᵢ‖² + λ tr(ΔW C ΔWᵀ): ΔW (λC + KKᵀ) = R Kᵀ
    K = keys.T
    assert torch.allclose(dW @ (lam * C + K @ K.T), resid.T @ keys, atol=1e-9)
    # with little regularisation the keys get their residuals exactly
    R, A = memit_update(resid, keys, C, 1e-9)
    assert torch.allclose((R @ A.T) @ K, resid.T, atol=1e-5)


def test_values_optimised_together_equal_values_optimised_alone(tiny_factory):
    """Batching the target optimisation is for speed only: each request gets what it gets alone, also when
    the requests stop at different steps (the finished ones leave the batch)."""

    from modeledit.llm.rows import build_rows
    from modeledit.llm.memory_hparams import ValueHyperParams
    from modeledit.llm.value import optimise_values

    lm = tiny_factory("llama")
    templates = ["{}", "Some words before it. {}", "A longer sentence that comes first here. {}"]
    reqs = REQS + [Request("{} was written in", "Hamlet", " Latin"), Request("{} is the capital of", "Oslo", " Peru")]
    for at in ("mlp_out", "block"):
        # float32: bfloat16 products round differently as the batch's shape changes, so there a request
        # gets its lone result only up to bfloat16 rounding (and may cross a loss stop one step apart)
        free = ValueHyperParams(steps=8, loss_stop=1e-9, precision="float32")
        runs = [optimise_values(lm, 2, build_rows(lm, r, templates), free, at)[0].losses for r in reqs]
        # a loss stop that the requests cross at as many different steps as possible
        def stops(t):
            return [next((i for i, l in enumerate(ls) if l < t), len(ls) - 1) for ls in runs]
        stop = max(sorted({l for ls in runs for l in ls}), key=lambda t: (len(set(stops(t))), -t))
        assert len(set(stops(stop))) >= 3, "the test needs requests that finish at different steps"
        hp = replace(free, loss_stop=stop)
        together = optimise_values(lm, 2, build_rows(lm, reqs, templates), hp, at)
        for r, t in zip(reqs, together):
            (alone,) = optimise_values(lm, 2, build_rows(lm, r, templates), hp, at)
            assert t.steps == alone.steps
            assert torch.allclose(t.delta, alone.delta, atol=1e-4, rtol=1e-3)
            assert torch.allclose(t.v0, alone.v0, atol=1e-4, rtol=1e-5)
            if at == "mlp_out":
                assert torch.allclose(t.k_star, alone.k_star, atol=1e-5)
        assert len({t.steps for t in together}) >= 3


def test_value_optimisation_stops_on_the_whole_loss_or_on_the_target_alone(tiny_factory):
    from modeledit.llm.rows import build_rows
    from modeledit.llm.memory_hparams import ValueHyperParams
    from modeledit.llm.value import optimise_values

    lm = tiny_factory("llama")
    templates = ["{}", "Some words before it. {}"]
    rows = build_rows(lm, REQS[0], templates)
    # a strong weight decay: the whole loss stays well above the target's NLL (as on SmolLM2, whose values are small)
    hp = ValueHyperParams(steps=10, loss_stop=1e-9, weight_decay=50.0, precision="float32")
    free = optimise_values(lm, 2, rows, hp)[0]
    nll, loss = free.target_nll, free.losses
    assert len(nll) == len(loss) == 10 and all(l > n for l, n in zip(loss[1:], nll[1:]))  # KL and weight decay on top
    # a threshold the NLL crosses before the whole loss does: "target" stops there, "loss" runs on
    t = min(loss)
    on_target = optimise_values(lm, 2, rows, replace(hp, loss_stop=t, stop_on="target"))[0]
    on_loss = optimise_values(lm, 2, rows, replace(hp, loss_stop=t))[0]
    assert on_target.steps == next(i for i, x in enumerate(nll) if x < t) < 9
    assert on_loss.steps == 9
    with pytest.raises(RequestError, match="stop_on"):
        me.get_method("rome", stop_on="nll")


def test_ft_l_keeps_every_weight_within_its_bound(tiny_factory):
    lm = tiny_factory("llama")
    bound = get_method("ft-l").hparams.norm_constraint
    assert bound == 5e-4
    (d,) = edit(lm, REQS, method="ft-l", layers=(1,), lr=1e-2).entries[0].deltas.values()
    assert d.dense.abs().max() <= bound + 1e-6  # up to the float32 rounding of w0 + Δ − w0
    (d,) = edit(lm, REQS, method="ft-m", layers=(1,), lr=1e-2).entries[0].deltas.values()
    assert d.dense.abs().max() > 10 * bound


def test_lora_leaves_no_adapter_behind(tiny_factory):
    lm = tiny_factory("llama")
    types = {n: type(m) for n, m in lm.model.named_modules()}
    patch = edit(lm, REQS, method="lora", layers=(1, 2), rank=4)
    assert {n: type(m) for n, m in lm.model.named_modules()} == types
    assert all(d.rank == 4 for d in patch.entries[0].deltas.values())
    assert all(p.requires_grad for p in lm.model.parameters())


def test_settings_are_checked_against_the_dataclass():
    from modeledit.llm.memit import MEMITHyperParams

    got = parse_settings(MEMITHyperParams, ["layers=6,7,8", "lr=0.1", "steps=5", "mom2_update_weight=none", "corpus=a.txt"])
    assert got == {"layers": (6, 7, 8), "lr": 0.1, "steps": 5, "mom2_update_weight": None, "corpus": "a.txt"}
    with pytest.raises(RequestError, match="no field 'nope'"):
        parse_settings(MEMITHyperParams, ["nope=1"])
    with pytest.raises(RequestError, match="steps='many'"):
        parse_settings(MEMITHyperParams, ["steps=many"])
    with pytest.raises(RequestError, match="name=value"):
        parse_settings(MEMITHyperParams, ["steps"])


def test_memit_reads_keys_and_residuals_as_a_full_pass_does(tiny_factory):
    """The spread's reader (rows cut after the subject, blocks below the range skipped) sees exactly what a
    full forward pass over the whole rows sees, also after an update inside the range is applied."""
    from modeledit.llm.hooks import Hooks
    from modeledit.llm.range_reader import RangeReader
    from modeledit.llm.rows import build_rows

    lm = tiny_factory("llama")
    templates = ["{}", "Some words before it. {}", "A longer sentence that comes first here. {}"]
    reqs = REQS + [Request("{} was written in", "Hamlet", " Latin")]
    reader = RangeReader(lm, 1, reqs, templates, batch=2)
    rows = build_rows(lm, reqs, templates, ())
    W = lm.model.get_parameter(lm.layout.weight_name(1))
    original = W.detach().clone()
    try:
        for step in range(2):
            with torch.no_grad(), Hooks(lm.model) as hooks:
                rec = hooks.record(lm.layout.mlp_out[2], inputs=True, outputs=False)
                out = hooks.record(lm.layout.blocks[3], outputs=True)
                lm.run(rows.input_ids, attention_mask=rows.attention_mask)
            at = torch.arange(len(rows.site)), rows.site
            k = rec.input[at].double()
            keys = torch.stack([k[rows.row_request == i].mean(0) for i in range(len(reqs))])
            assert torch.allclose(reader.keys(2), keys, rtol=1e-5, atol=1e-5)  # float32 rounding of other shapes
            assert torch.allclose(reader.residuals(3), out.output[at][rows.first_rows].float(), rtol=1e-4, atol=1e-5)
            with torch.no_grad():  # an update of layer 1 (the range's first): keys at 2 and residuals move
                W.add_(0.05 * torch.randn_like(W))
    finally:
        with torch.no_grad():
            W.copy_(original)


def test_alphaedit_writes_only_in_the_null_space_of_the_preserved_keys():
    """The update moves no preserved direction (C's large eigenvectors) at all; with the whole space as its
    null space and no earlier edits, it is MEMIT's update with C = I."""
    from modeledit.llm.alphaedit import alphaedit_update, null_space_projector
    from modeledit.llm.memit import memit_update

    torch.manual_seed(0)
    d_in, d_out, n = 12, 7, 4
    U, _ = torch.linalg.qr(torch.randn(d_in, d_in, dtype=torch.float64))
    spectrum = torch.cat([torch.linspace(1, 10, 6), torch.full((6,), 1e-4)]).double()
    C = U @ torch.diag(spectrum) @ U.T
    P, rank = null_space_projector(C, 1e-2)
    assert rank == 6
    # by energy: the smallest directions holding at most 0.1% of the trace are the same six (6e-4 of 33.0)
    P_e, rank_e = null_space_projector(C, 1e-2, energy=1e-3)
    assert rank_e == 6 and torch.allclose(P_e, P, atol=1e-10)
    assert null_space_projector(C, 1e-2, energy=1e-5)[1] == 3 and null_space_projector(C, 1e-2, energy=1e-6)[1] == 0
    keys, resid = torch.randn(n, d_in), torch.randn(n, d_out)
    earlier = torch.randn(d_in, 3, dtype=torch.float64)
    R, A = alphaedit_update(resid, keys, P, earlier @ earlier.T, 10.0)
    dW = R @ A.T
    kept = U[:, :6]  # the directions the corpus's keys use
    assert (dW @ kept).abs().max() < 1e-10 * dW.abs().max()
    assert dW.abs().max() > 1e-3
    R1, A1 = alphaedit_update(resid, keys, torch.eye(d_in, dtype=torch.float64), None, 10.0)
    R2, A2 = memit_update(resid, keys, torch.eye(d_in), 10.0)
    assert torch.allclose(R1 @ A1.T, R2 @ A2.T, atol=1e-10)


def test_alphaedit_continues_from_the_edits_the_model_holds(tiny_factory, tmp_path, monkeypatch):
    """A batch computed on a model holding an AlphaEdit edit keeps that edit's keys; on the unedited model
    (batches evaluated one by one) it starts from none."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    m = get_method("alphaedit", **QUICK["alphaedit"])
    first = m.edit(lm, REQS[0])
    alone = m.edit(lm, REQS[1])
    assert not first.entries[0].info["earlier_edits_remembered"] and not alone.entries[0].info["earlier_edits_remembered"]
    with first.applied(lm):
        after = m.edit(lm, REQS[1])
    assert after.entries[0].info["earlier_edits_remembered"]
    name = next(iter(alone.parameters))
    assert not torch.allclose(after.entries[0].deltas[name].materialize(lm.model.get_parameter(name)),
                              alone.entries[0].deltas[name].materialize(lm.model.get_parameter(name)))
    assert not m.edit(lm, REQS[1]).entries[0].info["earlier_edits_remembered"]  # reverted: nothing held


def test_memit_keeps_its_targets_on_disk_for_the_same_weights(tiny_factory, tmp_path, monkeypatch):
    """A rerun on the same weights reads every target from disk and makes the same edit; on weights that
    hold an edit, nothing is read (the targets of another state are never used)."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path))
    lm = tiny_factory("llama")
    hp = dict(QUICK["memit"], stats_tokens=1000)
    first = edit(lm, REQS, method="memit", **hp)
    assert first.entries[0].info["targets_from_disk"] == 0
    again = edit(lm, REQS, method="memit", **hp)
    assert again.entries[0].info["targets_from_disk"] == len(REQS)
    for name, d in first.entries[0].deltas.items():
        assert torch.equal(d.materialize(lm.model.get_parameter(name)), again.entries[0].deltas[name].materialize(lm.model.get_parameter(name)))
    with first.applied(lm):
        on_top = edit(lm, REQS, method="memit", **hp)
    assert on_top.entries[0].info["targets_from_disk"] == 0
    assert edit(lm, REQS, method="memit", **{**hp, "steps": 4}).entries[0].info["targets_from_disk"] == 0  # other value settings
    # "auto" and the precision it resolves to here are one computation: they share their targets
    from modeledit.llm.precision import resolve_precision

    here = resolve_precision("auto", lm.device)
    assert edit(lm, REQS, method="memit", **{**hp, "precision": here}).entries[0].info["targets_from_disk"] == len(REQS)
    other = "float32" if here == "bfloat16" else "bfloat16"
    assert edit(lm, REQS, method="memit", **{**hp, "precision": other}).entries[0].info["targets_from_disk"] == 0


def test_memit_passes_go_further_toward_the_targets(tiny_factory, tmp_path, monkeypatch):
    """A second round of the spread, on the model holding the first, closes more of the distance to z."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path))
    lm = tiny_factory("llama")
    reqs = REQS + [Request("{} was written in", "Hamlet", " Latin"), Request("{} is a citizen of", "Angela Merkel", " Peru")]
    hp = dict(QUICK["memit"], stats_tokens=1000, mom2_update_weight=50.0)
    one = edit(lm, reqs, method="memit", **hp).entries[0].info["target_distance_left"]
    two = edit(lm, reqs, method="memit", **hp, passes=2).entries[0].info["target_distance_left"]
    assert two < 0.8 * one, (one, two)  # 0.65 -> 0.46 on this tiny model


def test_memit_own_tokens_weight_holds_the_batchs_other_tokens(tiny_factory, tmp_path, monkeypatch):
    """With ``own_tokens_weight`` the update moves the keys of the requests' other tokens (their prompts' and
    targets' tokens besides the edit site) far less than MEMIT's own update does; 0 is the paper's."""
    from modeledit.llm.range_reader import RangeReader

    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path))
    lm = tiny_factory("llama")
    reqs = REQS + [Request("{} was written in", "Hamlet", " Latin"), Request("{} is a citizen of", "Angela Merkel", " Peru")]
    hp = dict(QUICK["memit"], stats_tokens=1000, mom2_update_weight=50.0)
    plain = edit(lm, reqs, method="memit", **hp)
    held = edit(lm, reqs, method="memit", **hp, own_tokens_weight=10.0)
    first = plain.entries[0].info["layers"][0]
    name = lm.layout.weight_name(first)
    W = lm.model.get_parameter(name)
    H = RangeReader(lm, first, reqs, ("{}",), 64, whole=True).off_site_moment(first)  # Σ k kᵀ, unedited model
    moved = lambda e: float(torch.trace(_as_out_in(lm, e.entries[0].deltas[name].materialize(W)) @ H  # noqa: E731
                                        @ _as_out_in(lm, e.entries[0].deltas[name].materialize(W)).T))
    assert moved(held) < 0.1 * moved(plain), (moved(held), moved(plain))  # 0.39 against 49.6 on this tiny model
    with pytest.raises(RequestError, match="own_tokens_weight"):
        get_method("memit", own_tokens_weight=-1.0)


def _as_out_in(lm, d):
    """A weight delta as (out, in) — transposed where the model stores the projection as (in, out)."""
    return d.T.double() if lm.layout.mlp_out_transposed else d.double()


def test_memit_retarget_gives_new_targets_to_the_requests_not_taken(tiny_factory, tmp_path, monkeypatch):
    """A round of new targets: the requests the edit does not take get a z optimised on the model holding the
    edit (kept on disk under those weights), and the spread goes on toward them; every round's patch is
    reverted. A random tiny model takes none: every request is retargeted. (What it buys: the zsRE run in
    the README.)"""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path))
    lm = tiny_factory("llama")
    reqs = REQS + [Request("{} was written in", "Hamlet", " Latin"), Request("{} is a citizen of", "Angela Merkel", " Peru")]
    hp = dict(QUICK["memit"], stats_tokens=1000, mom2_update_weight=50.0)
    before = state_bytes(lm.model)
    plain = edit(lm, reqs, method="memit", **hp)
    files = lambda: sorted(tmp_path.glob("targets/*/*.safetensors"))  # noqa: E731
    assert len(files()) == len(reqs)
    again = edit(lm, reqs, method="memit", **hp, retarget=1)
    assert same_state(lm.model, before)
    info = again.entries[0].info
    assert plain.entries[0].info["retargeted"] == [] and info["retargeted"] == [len(reqs)]
    assert info["targets_from_disk"] == len(reqs) and len(files()) == 2 * len(reqs)  # the first round's from disk, new ones on the edited weights
    assert edit(lm, reqs, method="memit", **hp, retarget=1).entries[0].info["targets_from_disk"] == 2 * len(reqs)
    name = next(iter(plain.entries[0].deltas))
    W = lm.model.get_parameter(name)
    assert again.entries[0].deltas[name].rank == 2 * plain.entries[0].deltas[name].rank  # the second spread's factors beside the first's
    assert not torch.allclose(again.entries[0].deltas[name].materialize(W), plain.entries[0].deltas[name].materialize(W))
    with pytest.raises(RequestError, match="retarget"):
        get_method("memit", retarget=-1)
    with pytest.raises(RequestError, match="AlphaEdit"):
        get_method("alphaedit", retarget=1)


def test_memit_prompt_key_fits_the_bare_prompts_own_key_too(tiny_factory, tmp_path, monkeypatch):
    """With ``prompt_key`` MEMIT and AlphaEdit fit each request's bare-prompt key beside its averaged one, so
    the residual stream at the bare prompts gets nearer the targets; with no context but the bare prompt
    (the two keys equal) the update is the paper's."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path))
    lm = tiny_factory("llama")
    reqs = REQS + [Request("{} was written in", "Hamlet", " Latin"), Request("{} is a citizen of", "Angela Merkel", " Peru")]
    for method, hp in (("memit", dict(QUICK["memit"], stats_tokens=1000, mom2_update_weight=50.0)),
                       ("alphaedit", dict(QUICK["alphaedit"], stats_tokens=1000))):
        left = {pk: edit(lm, reqs, method=method, **hp, prompt_key=pk).entries[0].info["target_distance_left"] for pk in (False, True)}
        assert left[True] < 0.8 * left[False], (method, left)  # MEMIT 0.65 -> 0.42, AlphaEdit 0.54 -> 0.06 here
    hp = dict(QUICK["memit"], stats_tokens=1000, mom2_update_weight=50.0, context_spec=())
    paper, ours = (edit(lm, reqs, method="memit", **hp, prompt_key=pk).entries[0] for pk in (False, True))
    for name, d in paper.deltas.items():
        W = lm.model.get_parameter(name)
        assert torch.allclose(d.materialize(W), ours.deltas[name].materialize(W), atol=1e-6)
