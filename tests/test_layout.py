import pytest
from torch import nn

from modeledit import UnsupportedModelError
from modeledit.llm.layout import find_layout

from conftest import EXPECTED_MLP_OUT, FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_are_found_by_walking_the_module_tree(tiny_factory, family):
    lm = tiny_factory(family)
    layout = lm.layout
    assert layout.n_layers == 4
    assert list(layout.mlp_out) == [EXPECTED_MLP_OUT[family].format(i) for i in range(4)]
    # the projection maps the MLP width back to the hidden width
    W = lm.model.get_parameter(layout.weight_name(2))
    out_in = tuple(W.shape[::-1]) if layout.mlp_out_transposed else tuple(W.shape)
    assert out_in == (layout.hidden_size, layout.intermediate_size)
    assert layout.mlp_out_transposed == (family == "gpt2")
    for i in range(4):
        assert layout.mlp_out[i].startswith(layout.mlp[i] + ".")
        assert "attn" in layout.attn[i] or "attention" in layout.attn[i]


def test_the_packaged_model_layout(smollm2):
    assert smollm2.layout.n_layers == 30
    assert smollm2.layout.mlp_out[10] == "model.layers.10.mlp.down_proj"
    assert smollm2.layout.intermediate_size == 1536


class _Config:
    num_hidden_layers = 2
    hidden_size = 8
    intermediate_size = 16

    def to_dict(self):
        return {}


class NoMLP(nn.Module):
    """Blocks of attention-like linears only: nothing maps the MLP width back to the hidden width."""

    def __init__(self):
        super().__init__()
        self.config = _Config()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)) for _ in range(2))


def test_an_architecture_without_a_findable_mlp_is_refused_clearly():
    with pytest.raises(UnsupportedModelError, match="cannot find the MLP output projection"):
        find_layout(NoMLP())


def test_a_model_without_layer_count_is_refused_clearly():
    m = nn.Linear(2, 2)
    with pytest.raises(UnsupportedModelError, match="names no layer count"):
        find_layout(m)
