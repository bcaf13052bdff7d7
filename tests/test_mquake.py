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
from modeledit.llm.generate import _hf_generate

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


def test_greedy_continuations_after_shared_text_equal_whole_rows(tiny_factory):
    """The shared text's cache, extended for rows of different lengths (left-padded after it), gives the
    same greedy continuations as reading each row whole."""
    lm = tiny_factory("llama")
    shared = "Q: Who is the spouse of Joe Biden? A: Jill Biden\nQ: What is the capital of France? A: Paris"
    rows = ["\nQ: Who wrote Faust? A:", "\nQ: In which country is the company that created the Nissan 200SX located? A:"]
    got = lm.generate(rows, 10, prefix=shared)
    assert got == _hf_generate(lm, [shared + r for r in rows], 10, False, 5, 0, ())
    stop = got[1][len(got[1]) // 2 :][:3]
    assert stop and lm.generate(rows, 10, prefix=shared, stop=(stop,))[1] == got[1].split(stop, 1)[0]


class _Scripted:
    """A stand-in for the language model in MeLLo's loop: answers each step from a script, by the question."""

    def __init__(self, script):
        self.script, self.context, self.seen = script, None, []

    def generate(self, prompts, max_new_tokens, prefix="", stop=()):
        self.seen.append(list(prompts))
        out = []
        for p in prompts:
            steps = self.script[p.split("Question: ")[1].split("\n")[0]]
            out.append(steps[p.count("Retrieved fact: ")])
        return out


def test_mello_retrieves_by_subquestion_and_follows_the_retrieved_fact(tiny_factory, tmp_path):
    lm = tiny_factory("llama")
    facts = [Request("{} is married to", "Ivanka Trump", " Rishi Sunak"), Request("{} is a citizen of", "Rishi Sunak", " Canada")]
    memory = edit(lm, facts, method="mello", prompt=mello_prompt(tmp_path / "mello.txt"), max_hops=3)
    q = "What is the country of citizenship of Ivanka Trump's spouse?"
    script = {q: ["Subquestion: Who is Ivanka Trump's spouse?\nGenerated answer: Ivanka Trump's spouse is Jared Kushner.\n",
                  "Retrieved fact contradicts to generated answer, so the intermediate answer is: Rishi Sunak\n"
                  "Subquestion: What is the country of citizenship of Rishi Sunak?\nGenerated answer: Rishi Sunak is a citizen of United Kingdom.\n",
                  "Retrieved fact contradicts to generated answer, so the intermediate answer is: Canada\nFinal answer: Canada"],
              "Who is Rishi Sunak?": ["I do not know.\n"]}
    fake = _Scripted(script)
    answers, traces = memory.answer_questions(fake, [q, "Who is Rishi Sunak?"])
    assert answers == ["Canada", ""]
    assert [s.get("retrieved") for s in traces[0]["steps"]] == ["Ivanka Trump is married to Rishi Sunak", "Rishi Sunak is a citizen of Canada", None]
    assert traces[1]["stopped"] == "no subquestion"
    assert fake.seen[1] == [fake.seen[0][0] + script[q][0] + "Retrieved fact: Ivanka Trump is married to Rishi Sunak.\n"]
    # bounded: a model that never concludes stops after max_hops retrievals
    endless = _Scripted({q: ["Subquestion: Who is Ivanka Trump's spouse?\nGenerated answer: Jared Kushner.\n"] * 5})
    answers, traces = memory.answer_questions(endless, [q])
    assert answers == [""] and len(traces[0]["steps"]) == 4 and "after 3 retrievals" in traces[0]["stopped"]
    again = load_edit(memory.save(tmp_path / "memory.json"))
    assert type(again) is type(memory) and again.answer_questions(_Scripted(script), [q])[0] == ["Canada"]


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
