"""IKE: an edit that changes no weight, read from the context; its demonstrations, routing and bad input."""

import json

import pytest
from typer.testing import CliRunner

from modeledit import DataError, Request, RequestError, edit, get_method, load_edit
from modeledit.cli import app
from modeledit.llm.score import score_continuations

from conftest import same_state, state_bytes
from test_methods import small_pool

EIFFEL = Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
JORDAN = Request("{} plays the sport of", "Michael Jordan", " chess", " basketball")


def _wins(lm, prompt, a, b):
    sa, sb = score_continuations(lm, [(prompt, a), (prompt, b)])
    return sa.mean_logprob > sb.mean_logprob


def test_demonstrations_follow_the_paper(tiny_factory, tmp_path, monkeypatch):
    """k shared out 1 : 3 : 4 over copy, update and retain (none of the edited fact's pool record), ordered
    by similarity with the most similar last, then the edited fact's own copy demonstration (the paper's
    code appends it); the ablation drops the retain kind."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    pool = small_pool(tmp_path / "pool.json")
    m = get_method("ike", pool=pool, k=8)
    assert m.counts() == {"copy": 1, "update": 3, "retain": 4}
    assert get_method("ike", pool=pool, k=8, retain=False).counts() == {"copy": 2, "update": 6, "retain": 0}
    own = Request("{} is located in the city of", "Big Ben", " Berlin", " London")  # a fact of the pool
    e = m.edit(lm, own)
    *demos, last = e.entries[0].demonstrations[0]
    assert last == "New Fact: Big Ben is located in the city of Berlin\nPrompt: Big Ben is located in the city of Berlin\n\n"
    assert e.entries[0].info["demonstrations_kept"] == 9
    assert get_method("ike", pool=pool, k=8, own_fact=False).edit(lm, own).entries[0].demonstrations[0] == demos
    assert len(demos) == 8 and all(d.startswith("New Fact: ") and d.endswith("\n\n") for d in demos)
    assert not any("Big Ben" in d for d in demos), "the edited fact's own pool record must not be shown"
    kinds = [("In other words" in d) for d in demos]
    assert sum(kinds) == 3  # the update demonstrations are the pool's paraphrases
    emb = m._embedder
    q = emb(["New Fact: Big Ben is located in the city of Berlin\nPrompt: Big Ben is located in the city of"])[0]
    sims = (emb(demos) @ q).tolist()
    assert all(a <= b + 1e-4 for a, b in zip(sims, sims[1:])), "most similar last, nearest the query"
    ablated = get_method("ike", pool=pool, k=8, retain=False, own_fact=False).edit(lm, own).entries[0].demonstrations[0]
    neighbours = [json.loads((tmp_path / "pool.json").read_text())[i]["locality_prompt"] for i in range(6)]
    assert len(ablated) == 8 and sum("In other words" in d for d in ablated) == 6
    assert not any(n in d for n in neighbours for d in ablated)
    assert any(n in d for n in neighbours for d in demos)


def test_each_prompt_reads_the_context_of_its_own_fact(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    e = edit(lm, [EIFFEL, JORDAN], method="ike", pool=small_pool(tmp_path / "pool.json"), k=4)
    eiffel, jordan = e.prefixes(["Where is the Eiffel Tower? It is in the city of", "Michael Jordan is best known for playing"])
    assert "New Fact: The Eiffel Tower is located in the city of Rome\nPrompt:" in eiffel and "Michael Jordan" not in eiffel.split("New Fact: The Eiffel")[-1]
    assert jordan.endswith("New Fact: Michael Jordan plays the sport of chess\nPrompt:")


@pytest.mark.slow
def test_ike_moves_a_fact_without_touching_a_weight(smollm2, tmp_path, monkeypatch):
    """Michael Jordan -> chess, from copy and update demonstrations of a small unrelated pool (its retain
    demonstrations, all about other facts keeping their answers, hold a 135M model to the old answers)."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    before = state_bytes(smollm2.model)
    e = edit(smollm2, JORDAN, method="ike", pool=small_pool(tmp_path / "pool.json"), k=8, retain=False)
    assert same_state(smollm2.model, before) and e.parameters == []
    assert not _wins(smollm2, JORDAN.text, " chess", " basketball")
    with e.applied(smollm2):
        assert _wins(smollm2, JORDAN.text, " chess", " basketball")
        assert e.entries[0].info["per_request"]["took"] == [True]
        assert "chess" in smollm2.generate(JORDAN.text, 4)
    assert same_state(smollm2.model, before) and smollm2.context is None
    assert "chess" not in smollm2.generate(JORDAN.text, 4)
    f = e.save(tmp_path / "jordan.json")
    assert json.loads(f.read_text())["entries"][0]["demonstrations"][0] == e.entries[0].demonstrations[0]
    with load_edit(f).applied(smollm2):
        assert _wins(smollm2, JORDAN.text, " chess", " basketball")
    r = CliRunner().invoke(app, ["patch", "show", str(f)])
    assert r.exit_code == 0 and "chess" in r.output and '"parameters": {}' in r.output
    r = CliRunner().invoke(app, ["patch", "apply", str(f), "--model", "smollm2-135m", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "changes no weight" in r.output


def test_bad_pools_and_contexts_are_one_clear_error(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(DataError, match="JSON list"):
        edit(lm, EIFFEL, method="ike", pool=str(empty))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"question": "what?"}]))
    with pytest.raises(DataError, match="record 0"):
        edit(lm, EIFFEL, method="ike", pool=str(wrong))
    with pytest.raises(RequestError, match="fewer than the"):
        edit(lm, EIFFEL, method="ike", pool=small_pool(tmp_path / "pool.json"), k=32)
    with pytest.raises(RequestError, match="k"):
        get_method("ike", k=0)
    long = tmp_path / "long.json"
    words = " ".join(["word"] * 400)
    long.write_text(json.dumps([{"case_id": 0, "prompt": f"{words} Big Ben is in", "subject": "Big Ben", "target_new": "Rome",
                                 "ground_truth": "London", "rephrase_prompt": "Big Ben lies in", "locality_prompt": "The Shard is in",
                                 "locality_ground_truth": "London"}]))
    short = tiny_factory("gpt_neox")  # 256 positions: not even one demonstration of 400 words fits
    with pytest.raises(RequestError, match="cannot hold even one demonstration"):
        edit(short, EIFFEL, method="ike", pool=str(long), k=1, ratio=(1, 0, 0))
