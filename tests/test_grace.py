"""GRACE: a codebook beside one layer — exact keys answer, far inputs pass bit-exact, conflicting keys are
kept apart, later edits win where they re-edit, and the codebook saves, loads and chains."""

import pytest
import torch

from modeledit import PatchError, Patch, Request, get_method, load_edit
from modeledit.llm.codebook import CodebookEdit, lookup
from modeledit.llm.grace import deferral_radii
from modeledit.llm.score import score_continuations

A = Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
B = Request("{} plays the sport of", "Michael Jordan", " chess", " basketball")


def logits(lm, text):
    with torch.no_grad():
        return lm.model(torch.tensor([lm.tokenizer(text)["input_ids"]])).logits


def greedy_ok(lm, r):
    s = score_continuations(lm, [(r.text, r.target)])[0]
    return s.top1 == s.tokens


def test_a_key_answers_within_its_radius_and_nothing_else_changes(tiny_factory):
    lm = tiny_factory("llama")
    grace = get_method("grace", layers=(1,))
    edit = grace.edit(lm, [A, B])
    far = "Bananas are yellow and grow in bunches on tall plants"
    before_far, before_a = logits(lm, far), logits(lm, A.text)
    with edit.applied(lm):
        assert greedy_ok(lm, A) and greedy_ok(lm, B)
        assert torch.equal(logits(lm, far), before_far), "an input far from every key must pass unchanged"
        assert not torch.equal(logits(lm, A.text), before_a)
        assert lm.codebooks == [edit]
    assert torch.equal(logits(lm, A.text), before_a) and lm.codebooks == []
    entry = edit.entries[0]
    # one key per target token; the prompt's own key lies at distance ~0 from itself
    n_tokens = [len(score_continuations(lm, [(r.text, r.target)])[0].tokens) for r in (A, B)]
    assert entry.keys.shape[0] == sum(n_tokens) and entry.owner.tolist() == [0] * n_tokens[0] + [1] * n_tokens[1]
    assert entry.module == lm.layout.mlp_out[1]


def test_radii_keep_keys_of_other_answers_apart():
    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5], [9.0, 9.0]])
    labels = [("x", 0), ("y", 0), ("x", 0), ("z", 0)]
    r = deferral_radii(keys, labels, 2.0, earlier=[])
    # key 0 and key 2 give the same answer: no split; key 1 is 1.0 from key 0 and ~1.118 from key 2
    assert r.tolist() == pytest.approx([0.5, 0.5, (1.25 ** 0.5) / 2, 2.0])
    _, hit = lookup(torch.tensor([[0.4, 0.0], [0.6, 0.0]]), keys, r)
    assert hit.tolist() == [True, True]  # each side of the split answered by its own key
    # an earlier key at the same place with another answer is re-edited (not a split); a near one splits
    earlier = [(torch.tensor([[0.0, 0.0], [0.0, 1.0]]), [("old", 0), ("old", 0)])]
    r2 = deferral_radii(keys[:1], labels[:1], 2.0, earlier)
    assert r2.tolist() == pytest.approx([0.5])


def test_a_later_edit_wins_where_it_re_edits_and_the_rest_holds(tiny_factory, tmp_path):
    lm = tiny_factory("llama")
    grace = get_method("grace", layers=(1,))
    first = grace.edit(lm, [A, B])
    a2 = Request(A.prompt, A.subject, " London", " Paris")
    with first.applied(lm):
        second = grace.edit(lm, [a2])  # computed on the model holding the first
        with second.applied(lm):
            assert greedy_ok(lm, a2) and greedy_ok(lm, B) and not greedy_ok(lm, A)
    both = first.then(second)
    f = both.save(tmp_path / "chain.safetensors")
    again = load_edit(f)
    assert isinstance(again, CodebookEdit) and again.requests == both.requests
    with again.applied(lm):
        assert greedy_ok(lm, a2) and greedy_ok(lm, B)
    with pytest.raises(PatchError, match="load_edit"):
        Patch.load(f)
    assert "codebook" in again.describe()["edits"][0]


def test_a_codebook_refuses_a_model_of_another_shape(tiny_factory):
    lm = tiny_factory("llama")
    edit = get_method("grace", layers=(1,)).edit(lm, [A])
    other = tiny_factory("gpt2")
    with pytest.raises(PatchError, match="another"):
        with edit.applied(other):
            pass
    assert other.codebooks == []
