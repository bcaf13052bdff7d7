import pytest
import torch
from safetensors.torch import save_file

from modeledit import PatchError
from modeledit.delta import Delta
from modeledit.patch import Patch

from conftest import same_state, state_bytes

REQ = {"prompt": "{} is in", "subject": "X", "target": " Y"}


def _patch(lm, layer=1, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    name = lm.layout.weight_name(layer)
    W = lm.model.get_parameter(name)
    d = Delta(left=scale * torch.randn(W.shape[0], 1, generator=g), right=torch.randn(W.shape[1], 1, generator=g))
    return Patch.from_deltas(lm.model, {name: d}, method="test", hparams={"seed": seed}, request=REQ, meta={"model": lm.name})


def test_apply_then_revert_restores_every_byte(tiny_factory):
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    patch = _patch(lm)
    applied = patch.apply(lm.model)
    assert not same_state(lm.model, before)
    applied.revert()
    assert same_state(lm.model, before)
    with patch.applied(lm.model):
        assert not same_state(lm.model, before)
    assert same_state(lm.model, before)


def test_save_and_load_round_trip(tiny_factory, tmp_path):
    lm = tiny_factory("gpt2")
    patch = _patch(lm)
    path = patch.save(tmp_path / "p.safetensors")
    loaded = Patch.load(path)
    assert loaded.describe() == patch.describe()
    with patch.applied(lm.model):
        a = state_bytes(lm.model)
    with loaded.applied(lm.model):
        assert same_state(lm.model, a)


def test_a_different_base_model_is_refused(tiny_factory):
    lm = tiny_factory("llama")
    patch = _patch(lm)
    before = state_bytes(lm.model)
    with patch.applied(lm.model):  # the model now differs from the patch's base
        mid = state_bytes(lm.model)
        with pytest.raises(PatchError, match="different base model"):
            patch.apply(lm.model)
        assert same_state(lm.model, mid)
    assert same_state(lm.model, before)
    import copy

    other = copy.deepcopy(lm.model)  # same architecture, one weight slightly different
    with torch.no_grad():
        other.get_parameter(patch.parameters[0])[0, 0] += 1e-3
    with pytest.raises(PatchError, match="different base model"):
        patch.apply(other)
    gpt2 = tiny_factory("gpt2")
    with pytest.raises(PatchError, match="has no parameter"):
        patch.apply(gpt2.model)


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(PatchError, match="not a readable safetensors patch"):
        Patch.load(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(PatchError, match="not a modeledit patch"):
        Patch.load(foreign)
    with pytest.raises(PatchError, match="no patch file"):
        Patch.load(tmp_path / "missing.safetensors")


def test_truncated_patch_file_is_refused(tiny_factory, tmp_path):
    lm = tiny_factory("llama")
    path = _patch(lm).save(tmp_path / "p.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PatchError):
        Patch.load(path)


def test_patches_compose_in_order(tiny_factory):
    lm = tiny_factory("llama")
    before = state_bytes(lm.model)
    p1 = _patch(lm, layer=1, seed=1)
    with p1.applied(lm.model):
        p2 = _patch(lm, layer=1, seed=2)  # made on the result of p1, same tensor
        with p2.applied(lm.model):
            sequential = state_bytes(lm.model)
    both = p1.then(p2)
    with both.applied(lm.model):
        assert same_state(lm.model, sequential)
    assert same_state(lm.model, before)
    with pytest.raises(PatchError, match="not made on the result"):
        p2.then(p1)
    assert len(Patch.compose(p1, p2)) == 2


def test_revert_from_saved_originals_and_by_subtraction(tiny_factory):
    lm = tiny_factory("qwen2")
    before = state_bytes(lm.model)
    patch = _patch(lm)
    applied = patch.apply(lm.model)
    originals = {k: v.clone() for k, v in applied.originals.items()}
    patch.revert(lm.model, originals)  # as `modeledit patch revert` does with the saved originals
    assert same_state(lm.model, before)
    with pytest.raises(PatchError, match="does not hold this patch"):
        patch.revert(lm.model, originals)
    patch.apply(lm.model)
    patch.revert(lm.model)  # no originals: subtraction, close but not promised bit-exact
    name = patch.parameters[0]
    assert torch.allclose(lm.model.get_parameter(name), before[name], atol=1e-5)
    lm.model.get_parameter(name).data.copy_(before[name])
