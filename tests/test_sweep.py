"""Where to edit: the token classes of the ROME paper's sweep, and the sweep itself (resumable, its
best layer, --set-layer) on a tiny model."""

import json

import pytest

from modeledit import RequestError, get_method, sweep
from modeledit.llm.rows import build_rows
from modeledit.llm.tokens import TOKEN_CLASSES, token_position
from modeledit import Request

CASES = [
    {"case_id": 7, "prompt": "The Eiffel Tower is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome",
     "ground_truth": "Paris", "rephrase_prompt": "Where is the Eiffel Tower? It is in the city of",
     "locality_prompt": "The Louvre is located in the city of", "locality_ground_truth": "Paris"},
    {"case_id": 9, "prompt": "Michael Jordan plays the sport of", "subject": "Michael Jordan", "target_new": "chess",
     "ground_truth": "basketball", "rephrase_prompt": "By profession, Michael Jordan plays the sport of",
     "locality_prompt": "Kobe Bryant plays the sport of", "locality_ground_truth": "basketball"},
]
FAST = dict(stats_tokens=3000, context_spec=((5, 2),), steps=4)


def test_token_classes_follow_the_paper():
    # a subject over tokens 2..5 of a 10-token prompt
    got = {t: token_position(t, 2, 5, 10) for t in TOKEN_CLASSES}
    assert got == {"first_subject": 2, "middle_subject": 3, "last_subject": 5, "first_after": 6, "further": 7, "last": 9}
    assert token_position("middle_subject", 4, 5, 10) is None  # two subject tokens: none strictly inside
    assert token_position("further", 2, 5, 8) is None  # after the subject only the first subsequent and the last
    assert token_position("first_after", 2, 9, 10) is None  # the subject ends the prompt
    with pytest.raises(RequestError, match="token"):
        token_position("middle", 2, 5, 10)


def test_rows_put_the_edit_site_at_the_class(tiny_factory):
    lm = tiny_factory("llama")
    r = Request("{} is located in the city of", "The Eiffel Tower", " Rome")
    last = build_rows(lm, [r], ["{}"], ["{} is a"])
    after = build_rows(lm, [r], ["{}"], ["{} is a"], token="first_after")
    end = build_rows(lm, [r], ["{}"], ["{} is a"], token="last")
    n_prompt = len(lm.tokenizer(r.text)["input_ids"])
    assert int(after.site[0]) == int(last.site[0]) + 1 and int(end.site[0]) == n_prompt - 1
    # the KL row "{} is a": its first subsequent token, and its last token
    assert int(after.site[1]) == int(last.site[1]) + 1 and int(end.site[1]) == int(last.site[1]) + 2
    with pytest.raises(RequestError, match="no further token"):
        build_rows(lm, [Request("{} is in", "Paris", " France")], ["{}"], (), token="further")
    assert get_method("rome", token="first_after").hparams.token == "first_after"
    with pytest.raises(RequestError, match="token"):
        get_method("rome", token="everywhere")


def test_the_sweep_scores_every_cell_resumes_and_sets_the_layer(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    f = tmp_path / "cf.json"
    f.write_text(json.dumps(CASES))
    out = tmp_path / "sweep"
    tokens = ["first_after", "further", "last_subject"]

    def stop(done, total):  # interrupted in the second row: the first row's picture and means are written
        if done > 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(lm, f, out, layers=[1, 2], tokens=tokens, progress=stop, **FAST)
    partial = json.loads((out / "sweep.json").read_text())
    assert not partial["complete"] and partial["best_last_subject"] is not None
    assert partial["grid"]["efficacy_score"]["first_after"] == [None, None] and (out / "sweep.png").exists()
    result = sweep(lm, f, out, layers=[1, 2], tokens=tokens, set_layer=True, **FAST)
    cells = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert len(cells) == 2 * 2 * 3 and len({c["cell"] for c in cells}) == 12 and result["complete"]
    # the last subject token's row is swept first (it chooses the layer)
    assert [c["token"] for c in cells[:4]] == ["last_subject"] * 4
    # "Michael Jordan plays the sport of": a further token exists; a prompt may lack one: skipped, not failed
    skipped = [c for c in cells if "skipped" in c]
    assert all(c["token"] == "further" for c in skipped)
    grid = result["grid"]
    for t in tokens:
        for i, layer in enumerate([1, 2]):
            mine = [c for c in cells if c["token"] == t and c["layer"] == layer and "post" in c]
            es = grid["efficacy_score"][t][i]
            assert (es is None) == (not mine)
            if mine:
                assert es == pytest.approx(100 * sum(c["post"]["efficacy_score"] for c in mine) / len(mine))
    best = result["best_last_subject"]
    s = grid["score"]["last_subject"]
    assert best["layer"] == [1, 2][max(range(2), key=lambda i: s[i])]
    from modeledit.llm.rome import default_layer

    assert default_layer(lm)[0] == best["layer"] and "edit sweep" in default_layer(lm)[1]
    assert (out / "sweep.png").stat().st_size > 10_000
    # a second run finds every cell done: nothing is edited again
    again = sweep(lm, f, out, layers=[1, 2], tokens=tokens, **FAST)
    assert (out / "cells.jsonl").read_text().count("\n") == 12 and again["grid"] == grid
    with pytest.raises(Exception, match="other settings|differ"):
        sweep(lm, f, out, layers=[1], tokens=tokens, **FAST)
    with pytest.raises(RequestError, match="rome"):
        sweep(lm, f, tmp_path / "x", method="memit", layers=[1])


def test_edit_each_gives_each_request_its_own_edit(tiny_factory, tmp_path, monkeypatch):
    """ROME's edit_each: one patch per request, each as if edited alone (values optimised side by side)."""
    import torch

    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    rome = get_method("rome", layer=1, **FAST)
    reqs = [Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris"),
            Request("{} plays the sport of", "Michael Jordan", " chess", " basketball")]
    each = rome.edit_each(lm, reqs)
    assert [p.requests for p in each] == [[r.to_dict()] for r in reqs]
    for p, r in zip(each, reqs):
        alone = rome.edit(lm, r)
        (name,) = alone.parameters
        w = lm.model.get_parameter(name)
        a, b = alone.entries[0].deltas[name].materialize(w), p.entries[0].deltas[name].materialize(w)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
        assert p.entries[0].info["per_request"]["took"] == alone.entries[0].info["per_request"]["took"]
