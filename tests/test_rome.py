import math

import pytest
import torch

from modeledit import EditFailedError, Request, RequestError, edit
from modeledit.llm.contexts import context_templates
from modeledit.llm.rome import ROME, rank_one_update
from modeledit.llm.rows import build_rows
from modeledit.llm.score import score_continuations
from modeledit.llm.request import fill
from modeledit.llm.memory_hparams import ValueHyperParams
from modeledit.llm.value import optimise_values

from conftest import FAMILIES, same_state, state_bytes

REQ = Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
FAST = dict(stats_tokens=3000, context_spec=((5, 2), (10, 2)), steps=12)


def test_rank_one_update_writes_the_association_exactly():
    torch.manual_seed(0)
    W = torch.randn(6, 10, dtype=torch.float64)
    A = torch.randn(10, 10, dtype=torch.float64)
    C = A @ A.T + 0.1 * torch.eye(10, dtype=torch.float64)
    k, v = torch.randn(10, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    r, u = rank_one_update(W, C, k, v)
    W2 = W + torch.outer(r, u)
    assert torch.allclose(W2 @ k, v, atol=1e-10)
    # the change is along u = C⁻¹k* only: keys with uᵀx = 0 are mapped as before
    x = torch.randn(10, dtype=torch.float64)
    x = x - (x @ u) / (u @ u) * u
    assert torch.allclose(W2 @ x, W @ x, atol=1e-10)
    s = torch.linalg.solve(C, k)
    assert torch.allclose(u, s / (s @ k))
    b = torch.randn(6, dtype=torch.float64)  # a projection with a bias (GPT-2's c_proj): v* is its output
    r, u = rank_one_update(W, C, k, v, bias=b)
    assert torch.allclose((W + torch.outer(r, u)) @ k + b, v, atol=1e-10)



def test_prompt_key_update_gives_both_keys_the_whole_change():
    """prompt_key: ΔW = δ uᵀ with uᵀk* = uᵀk_prompt = 1 — both keys get exactly δ, and among such
    updates it is the least in C (any other u satisfying both costs more); parallel keys: the paper's."""
    torch.manual_seed(1)
    W = torch.randn(6, 10, dtype=torch.float64)
    A = torch.randn(10, 10, dtype=torch.float64)
    C = A @ A.T + 0.1 * torch.eye(10, dtype=torch.float64)
    k, kp, d = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    r, u = rank_one_update(W, C, k, W @ kp + d, k_prompt=kp, delta=d)
    dW = torch.outer(r, u)
    assert torch.allclose(dW @ k, d, atol=1e-10) and torch.allclose(dW @ kp, d, atol=1e-10)
    z = torch.linalg.svd(torch.stack([k, kp]))[2][2]  # a direction both keys are blind to
    worse = u + 0.1 * z
    assert torch.allclose(worse @ k, torch.tensor(1.0, dtype=torch.float64)) and worse @ C @ worse > u @ C @ u
    _, u1 = rank_one_update(W, C, k, W @ kp + d, k_prompt=2 * k, delta=d)  # parallel: the paper's direction
    _, u0 = rank_one_update(W, C, k, W @ kp + d)
    assert torch.equal(u1, u0)

@pytest.mark.parametrize("family", FAMILIES)
def test_suffix_only_steps_reproduce_the_full_forward(tiny_factory, family):
    """The value optimisation caches the prefix (before the subject) and runs only the suffix from the
    edited layer up; at δ = 0 its target probability must equal a plain full forward's."""
    lm = tiny_factory(family)
    templates = ["{}", "Some words before it. {}", "The answer is clear. {}"]
    rows = build_rows(lm, REQ, templates)
    (res,) = optimise_values(lm, 2, rows, ValueHyperParams(steps=1))
    ref = score_continuations(lm, [(fill(fill(t, REQ.prompt), REQ.subject), REQ.target) for t in templates])
    p_ref = sum(torch.tensor(c.logprob / c.n_tokens).exp().item() for c in ref) / len(ref)
    assert res.target_prob[0] == pytest.approx(p_ref, rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_rome_edits_every_family_and_leaves_the_weights_alone(tiny_factory, family):
    lm = tiny_factory(family)
    before = state_bytes(lm.model)
    patch = edit(lm, REQ, layer=1, **FAST)
    assert same_state(lm.model, before), "edit() must not change the weights: the change lives in the patch"
    (p0,) = score_continuations(lm, [(REQ.text, REQ.target)])
    with patch.applied(lm.model):
        (p1,) = score_continuations(lm, [(REQ.text, REQ.target)])
        assert not same_state(lm.model, before)
    assert same_state(lm.model, before)
    # a random 4-layer model carries a change at layer 1 to the last position only through two random
    # attention layers, so the gain is small here; the real-model tests check that edits take hold
    info = patch.entries[0].info
    assert info["layer"] == 1 and info["gradient_steps"] >= 1
    assert info["loss_last"] < info["loss_first"]
    assert abs(p1.logprob - p0.logprob) > 1e-3  # the edit moves the target's score (up or, here, sometimes down)
    # the outcome the edit recorded is the score of the edited model
    assert info["per_request"]["target_prob_after"][0] == pytest.approx(p1.mean_prob, rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: a weight stored transposed, and a bias
def test_the_update_writes_the_new_value_at_the_keys(tiny_factory, family):
    """The paper's update with R-ROME's fix (prompt_key=False): W' k* + b = v*, k* the key averaged over
    the context templates. Ours (the default): the averaged key and the prompt's own both get exactly δ."""
    lm = tiny_factory(family)
    proj = lm.model.get_submodule(lm.layout.mlp_out[2])
    for pk in (False, True):
        method = ROME(layer=2, prompt_key=pk, **FAST)
        rows = build_rows(lm, REQ, context_templates(lm, method.hparams.context_spec))
        (res,) = optimise_values(lm, 2, rows, method.hparams.value)
        patch = method.edit(lm, REQ)
        with torch.no_grad():
            keys = torch.stack([res.k_star, res.k_prompt])
            before = proj(keys)
            with patch.applied(lm.model):
                after = proj(keys)
        if pk:
            assert torch.allclose(after - before, res.delta.expand(2, -1), atol=1e-4)
        else:
            assert torch.allclose(after[0], res.v0 + res.delta, atol=1e-4)
            assert not torch.allclose(after[1] - before[1], res.delta, atol=1e-3)  # the prompt's key: only a share


def test_a_nan_during_optimisation_fails_clearly_and_keeps_the_weights(tiny_factory):
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    norm = lm.model.model.norm
    handle = norm.register_forward_hook(lambda m, a, out: out * float("nan") if torch.is_grad_enabled() else out)
    try:
        with pytest.raises(EditFailedError, match="non-finite loss"):
            edit(lm, REQ, layer=1, **FAST)
    finally:
        handle.remove()
    assert same_state(lm.model, before)
    assert all(p.requires_grad for p in lm.model.parameters()), "gradients must be switched back on"
    # and the model still works: no hook left behind
    assert torch.isfinite(torch.tensor(score_continuations(lm, [(REQ.text, REQ.target)])[0].logprob))


def test_bad_hyper_parameters_are_refused(tiny_factory):
    lm = tiny_factory("llama")
    with pytest.raises(RequestError, match="layer"):
        edit(lm, REQ, layer=99)
    with pytest.raises(RequestError, match="lr"):
        ROME(lr=float("nan"))
    with pytest.raises(RequestError, match="unknown method"):
        edit(lm, REQ, method="nope")
    with pytest.raises(RequestError, match="hyper-parameters of rome"):
        edit(lm, REQ, no_such_option=1)


def test_bfloat16_precision_finds_the_same_value_and_gives_the_weights_back(tiny_factory):
    """precision="bfloat16" multiplies in bfloat16 in the loop: keys and values stay the model's own
    (float32), δ stays float32, and the parameters are never touched."""
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    rows = build_rows(lm, REQ, ["{}", "Some words before it. {}", "The answer is clear. {}"])
    (a,) = optimise_values(lm, 2, rows, ValueHyperParams(steps=8))
    (b,) = optimise_values(lm, 2, rows, ValueHyperParams(steps=8, precision="bfloat16"))
    assert same_state(lm.model, before) and all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert torch.equal(a.v0, b.v0) and torch.equal(a.k_star, b.k_star)
    assert b.delta.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a.delta, b.delta, dim=0) > 0.98
    assert math.log(b.target_prob[1]) == pytest.approx(math.log(a.target_prob[1]), abs=0.1)
    assert b.losses[-1] < b.losses[0] - 0.05


def test_bfloat16_matmuls_leave_the_model_as_it_was_also_on_error(tiny_factory):
    from modeledit.llm.precision import computing_in

    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    x = torch.randint(0, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    ref = lm.model(x).logits
    with pytest.raises(RuntimeError, match="boom"):
        with computing_in(lm.model, "bfloat16"):
            low = lm.model(x).logits
            assert low.dtype == torch.float32 and not torch.equal(low, ref)
            assert (low - ref).abs().mean() < 0.05 * ref.abs().mean()  # bfloat16: 8 bits of mantissa
            raise RuntimeError("boom")
    assert same_state(lm.model, before) and torch.equal(lm.model(x).logits, ref)
    assert not any("forward" in m.__dict__ for m in lm.model.modules())
    with pytest.raises(RequestError, match="precision"):
        ROME(precision="float16")


def test_auto_precision_is_bfloat16_only_where_the_hardware_multiplies_it():
    from modeledit.llm.precision import fast_bfloat16, resolve_precision
    from modeledit.llm.trace_engine import TraceConfig

    cpu = torch.device("cpu")
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    assert fast_bfloat16(cpu) == amx
    assert resolve_precision("auto", cpu) == ("bfloat16" if amx else "float32")
    assert resolve_precision("float32", cpu) == "float32" and resolve_precision("bfloat16", cpu) == "bfloat16"
    assert ROME().hparams.precision == "auto"
    with pytest.raises(RequestError, match="precision"):
        TraceConfig(precision="auto")  # traces take an explicit precision


def test_reach_is_the_share_of_the_change_the_update_writes_at_another_key():
    """ΔW k = (v* − W k*) · reach(k): what the guard rows add to another subject's value is exactly what
    the rank-one update writes there."""
    from modeledit.llm.reach import reach

    torch.manual_seed(1)
    W = torch.randn(6, 10, dtype=torch.float64)
    A = torch.randn(10, 10, dtype=torch.float64)
    C = A @ A.T + 0.1 * torch.eye(10, dtype=torch.float64)
    k_star, v_star = torch.randn(2, 10, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    others = torch.randn(5, 10, dtype=torch.float64)
    owner = torch.tensor([0, 1, 1, 0, 1])
    share = reach(C, k_star, others, owner).double()
    for i in range(5):
        q = int(owner[i])
        r, u = rank_one_update(W, C, k_star[q], v_star[q])
        assert torch.allclose(torch.outer(r, u) @ others[i], (v_star[q] - W @ k_star[q]) * share[i], atol=1e-5)
    assert reach(C, k_star[0], k_star[:1]).item() == pytest.approx(1.0)
    assert reach(None, k_star[0], others[:1]).item() == pytest.approx(float(others[0] @ k_star[0] / (k_star[0] @ k_star[0])))


def test_guard_rows_weigh_nothing_at_factor_zero_and_are_reported(tiny_factory):
    """Guard rows are independent rows: at guard_factor 0 the value is the unguarded one. (That they hold
    their subjects is checked on a real model: test_gemma3.)"""
    from modeledit.llm.stats import second_moments

    lm = tiny_factory("llama")
    templates = ["{}", "Some words before it. {}"]
    C = second_moments(lm, [2], ROME(**FAST).hparams.stats)[2]
    hp = ValueHyperParams(steps=8, precision="float32")
    (plain,) = optimise_values(lm, 2, build_rows(lm, REQ, templates), hp)
    rows = build_rows(lm, REQ, templates, guards=[["The Louvre", "Big Ben", "The Colosseum"]])
    assert int(rows.is_guard.sum()) == 3 and bool(rows.is_kl[rows.is_guard].all())
    (zero,) = optimise_values(lm, 2, rows, ValueHyperParams(steps=8, precision="float32", guard_factor=0.0), C=C)
    # the guard rows change the batch's shape, and with it how a CPU's GEMM blocks its sums: equal to float noise
    # (1e-4 of |δ| ≈ 3.5 after 8 steps on an AMD EPYC), where a guard term that weighed anything moves δ by far more
    assert torch.allclose(zero.delta, plain.delta, atol=1e-3) and zero.steps == plain.steps
    patch = ROME(layer=2, guard_subjects=2, guard_pool=40, **FAST).edit(lm, REQ)
    guarded = patch.entries[0].info["guarded"]
    assert len(guarded) == 2 and all(REQ.subject not in s for s in guarded)
    with pytest.raises(RequestError, match="guard_pool"):
        ROME(guard_subjects=5, guard_pool=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_guard_is_on_by_default_only_where_the_mlp_output_is_normalised_again(tiny_factory, family):
    """Found by running the block, not by the model's name: Gemma-3 normalises its MLP's output again."""
    from modeledit.llm.reach import guard_count, mlp_output_renormalised

    lm = tiny_factory(family)
    assert mlp_output_renormalised(lm, 1) == (family == "gemma3")
    assert guard_count(lm, 1, None) == (8 if family == "gemma3" else 0)
    assert guard_count(lm, 1, 3) == 3 and guard_count(lm, 1, 0) == 0
