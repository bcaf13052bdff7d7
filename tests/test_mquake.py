"""MQuAKE: loading, answer matching, the batches at edits-per-batch = all, scoring; MeLLo's loop; greedy
continuations after shared text."""

import json

import pytest
from typer.testing import CliRunner

from modeledit import DataError, Request, edit, evaluate, load_edit
from modeledit.cli import app
from modeledit.evaluation import cut_batches
from modeledit.llm.answer import matches, normalize
from modeledit.llm.bench.mquake import MQuAKE, load_mquake
from modeledit.llm.generate import _hf_generate, cut

from test_methods import mello_prompt


def test_answers_are_matched_after_normalising():
    assert normalize("The  United Kingdom.") == "united kingdom"
    assert matches("the united kingdom!", ["United Kingdom"])
    assert not matches("United Kingdom of Great Britain", ["United Kingdom"])  # a whole answer line must match
    assert matches(" Madonna, who sang it in 1985", ["Madonna"], prefix=True)  # a cloze runs on past its answer
    assert not matches(" Madonnas", ["Madonna"], prefix=True)
    assert not matches("", ["", "English"])


def test_cases_load_with_their_edits_and_paths(data):
    cases = load_mquake(data / "mquake-hard.json")
    assert len(cases) == 429 and all(len(c.requests) == 4 for c in cases)
    c = cases[0]
    assert c.requests[0] == Request("{} was performed by", "Hey Jude", " Madonna", " The Beatles")
    assert c.new_answers[0] == "Arabic" and "en" in c.answers
    assert [h.relation for h in c.hops] == ["P175", "P1037", "P27", "P37"]
    assert c.new_hops[1].question == "Who is the director of Madonna?" and c.hops[1].answers[0] == "Brian Epstein"
    assert "Madonna Ciccone" in c.edit_answers[0][0]  # the new answer's aliases, from the new path


def test_all_cases_in_one_batch_except_those_that_contradict(data):
    """MQuAKE-hard gives two subjects two different new answers: at edits-per-batch = all, the later case
    of each pair goes to a second batch instead of one edit holding both."""
    cases = load_mquake(data / "mquake-hard.json")
    batches = cut_batches(cases, len(cases), lambda c: c.requests)
    assert [len(b) for b in batches] == [427, 2]
    assert [len(b) for b in cut_batches(cases[:5], 2, lambda c: c.requests)] == [2, 2, 1]  # file order otherwise
    first = {(r.prompt, r.subject): r.target for c in batches[0] for r in c.requests}
    clashes = [r for c in batches[1] for r in c.requests if first.get((r.prompt, r.subject), r.target) != r.target]
    assert len(clashes) == 2


def test_bad_mquake_input_is_refused(tmp_path, data):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"case_id": 1, "questions": ["q?"]}]))
    with pytest.raises(DataError, match="record 0 is not an MQuAKE case"):
        load_mquake(bad)
    alone = tmp_path / "alone" / "mquake.json"
    alone.parent.mkdir()
    alone.write_text((data / "mquake-hard.json").read_text())
    with pytest.raises(DataError, match="prompt files .* are not in"):
        MQuAKE().load(alone, 2)
    r = CliRunner().invoke(app, ["eval", "mquake", "--data", str(data / "mquake-hard.json"), "--out", str(tmp_path / "o"),
                                 "--edits-per-batch", "0"])
    assert r.exit_code != 0 and "edits-per-batch" in r.output and "positive number of cases or 'all'" in r.output


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # gemma3: a sliding window of 8 tokens, shorter than the text
def test_greedy_continuations_after_shared_text_equal_whole_rows(tiny_factory, family):
    """The shared text's cache, extended for rows of different lengths (left-padded after it), gives the
    same greedy continuations as reading each row whole."""
    lm = tiny_factory(family)
    shared = "Q: Who is the spouse of Joe Biden? A: Jill Biden\nQ: What is the capital of France? A: Paris"
    rows = ["\nQ: Who wrote Faust? A:", "\nQ: In which country is the company that created the Nissan 200SX located? A:"]
    got = lm.generate(rows, 10, prefix=shared)
    assert got == _hf_generate(lm, [shared + r for r in rows], 10, False, 5, 0, ())
    # without shared text, greedy continuations take the same loop: transformers' own, again
    assert lm.generate(rows, 10) == _hf_generate(lm, rows, 10, False, 5, 0, ())
    stop = got[1][len(got[1]) // 2 :][:3]
    assert stop and lm.generate(rows, 10, prefix=shared, stop=(stop,))[1] == got[1].split(stop, 1)[0]
    if family == "llama":  # (the tiny gemma3's next-token distributions are too peaked for samples to differ)
        sampled = [lm.generate(rows, 10, prefix=shared, do_sample=True, seed=s) for s in (1, 1, 2)]
        assert sampled[0] == sampled[1] != sampled[2]  # seeded top-k sampling after the cached text


class _ScriptedRows:
    """A stand-in for the model's rows in MeLLo's loop: each step's text from a script, by the question and
    the number of facts retrieved so far."""

    def __init__(self, script, texts):
        self.script, self.texts = script, list(texts)

    def extend(self, texts):
        for i, t in texts.items():
            self.texts[i] += t

    def greedy(self, rows, max_new_tokens, stop):
        out = []
        for i in rows:
            q = self.texts[i].split("Question: ")[1].split("\n")[0]
            read = self.script[q][self.texts[i].count("Retrieved fact:")]
            self.texts[i] += read
            out.append((cut(read, stop), read))
        return out


def test_mello_retrieves_by_subquestion_and_follows_the_retrieved_fact(tiny_factory, tmp_path, monkeypatch):
    lm = tiny_factory("llama")
    facts = [Request("{} is married to", "Ivanka Trump", " Rishi Sunak"), Request("{} is a citizen of", "Rishi Sunak", " Canada")]
    memory = edit(lm, facts, method="mello", prompt=mello_prompt(tmp_path / "mello.txt"), max_hops=3)
    q = "What is the country of citizenship of Ivanka Trump's spouse?"
    script = {q: ["Subquestion: Who is Ivanka Trump's spouse?\nGenerated answer: Ivanka Trump's spouse is Jared Kushner.\nRetrieved fact:",
                  "\nRetrieved fact contradicts to generated answer, so the intermediate answer is: Rishi Sunak\n"
                  "Subquestion: What is the country of citizenship of Rishi Sunak?\nGenerated answer: Rishi Sunak is a citizen of UK.\nRetrieved fact:",
                  "\nRetrieved fact contradicts to generated answer, so the intermediate answer is: Canada\nFinal answer: Canada\n\nQuestion:"],
              "Who is Rishi Sunak?": ["I do not know.\n\nQuestion:"]}
    made = []
    monkeypatch.setattr("modeledit.llm.generate.Rows", lambda lm, head, texts: made.append(_ScriptedRows(script, texts)) or made[-1])
    answers, traces = memory.answer_questions(lm, [q, "Who is Rishi Sunak?"])
    assert answers == ["Canada", ""]
    assert [s.get("retrieved") for s in traces[0]["steps"]] == ["Ivanka Trump is married to Rishi Sunak", "Rishi Sunak is a citizen of Canada", None]
    assert traces[1]["stopped"] == "no subquestion"
    assert made[0].texts[0].startswith("\n\nQuestion: " + q + "\n" + script[q][0] + " Ivanka Trump is married to Rishi Sunak.\nRetrieved fact contradicts")  # the fact, then the model's line
    # bounded: a model that never concludes stops after max_hops retrievals
    script[q] = ["Subquestion: Who is Ivanka Trump's spouse?\nGenerated answer: Jared Kushner.\nRetrieved fact:"] * 5
    answers, traces = memory.answer_questions(lm, [q])
    assert answers == [""] and len(traces[0]["steps"]) == 4 and "after 3 retrievals" in traces[0]["stopped"]
    again = load_edit(memory.save(tmp_path / "memory.json"))
    assert type(again) is type(memory) and again.entries[0].info["memory"] == memory.entries[0].info["memory"]


def test_rows_continued_step_by_step_read_what_a_whole_pass_reads(tiny_factory):
    """Rows kept between steps (MeLLo's loop): after a shared head, text appended to some rows and greedy
    steps of others give the tokens that greedy decoding of each row's whole token sequence gives."""
    import torch

    from modeledit.llm.generate import Rows

    lm = tiny_factory("llama")
    tok = lm.tokenizer
    head, texts = "Question: Who wrote Faust?", ["\nSubquestion: Who", "\nSubquestion: What is the capital of France?"]
    rows = Rows(lm, head, texts)
    first = rows.greedy([0, 1], 5)
    rows.extend({1: " Retrieved fact: Paris."})
    second = rows.greedy([1], 4)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    for row, (got, read) in ((0, first[0]), (1, second[0])):
        seq = tok(head)["input_ids"] + ids(texts[row])
        if row == 1:
            seq += ids(first[1][1]) + ids(" Retrieved fact: Paris.")
        want = lm.model.generate(torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long),
                                 max_new_tokens=5 if row == 0 else 4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert got == read == tok.decode(want[0, len(seq):], skip_special_tokens=True)


def test_mquake_evaluation_scores_both_paths_and_resumes(tiny_factory, data, tmp_path, monkeypatch):
    """Each phase is scored on both answers; pre summarises the original path, post the new one; the
    memory's traces land in the records; a rerun adds nothing."""
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    out = tmp_path / "mq"
    kw = dict(method="mello", benchmark="mquake", limit=2, batch_size="all", prompt=mello_prompt(tmp_path / "m.txt"), max_hops=1)
    s = evaluate(lm, data / "mquake-hard.json", out, **kw)
    assert s["n"] == 2 and s["batches"] == 1 and set(s["pre"]) >= {"edit_wise", "multi_hop", "hop_wise", "multihop_correct"}
    recs = [json.loads(line) for line in open(out / "cases.jsonl")]
    assert len(recs[0]["post"]["traces"]) == 3 and len(recs[0]["post"]["hop_traces"]) == 8
    assert "traces" not in recs[0]["pre"] and len(recs[0]["pre"]["hops_true"]) == 4
    assert recs[0]["post"]["traces"][0]["question"] == load_mquake(data / "mquake-hard.json", 1)[0].questions[0]
    assert recs[0]["score_seconds"] > 0
    assert evaluate(lm, data / "mquake-hard.json", out, **kw)["n"] == 2
    assert sum(1 for _ in open(out / "cases.jsonl")) == 2
