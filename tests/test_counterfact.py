import json

import pytest

from modeledit import DataError, evaluate
from modeledit.llm.bench.counterfact import CounterFact, load_counterfact
from modeledit.llm.score import ngram_entropy, score_continuations

LONG_FORM = [
    {
        "case_id": 0,
        "pararel_idx": 2796,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native", "An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"],
        "attribute_prompts": ["J.R.R. Tolkien is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is", "Where Danielle Darrieux is from, people speak the language of"],
    }
]


def test_both_forms_load(data, tmp_path):
    short = load_counterfact(data / "counterfact-val.json", limit=3)
    assert len(short) == 3
    c = short[0]
    assert c.request.prompt == "{}, by" and c.request.subject == "BBC One"
    assert c.request.target == " Sega" and c.request.target_true == " BBC"
    assert c.paraphrase_prompts and c.neighborhood_prompts
    f = tmp_path / "long.json"
    f.write_text(json.dumps(LONG_FORM))
    (lc,) = load_counterfact(f)
    assert lc.request.text == "The mother tongue of Danielle Darrieux is"
    assert lc.request.target == " English" and lc.request.target_true == " French"
    assert len(lc.paraphrase_prompts) == 2 and len(lc.neighborhood_prompts) == 2 and len(lc.generation_prompts) == 2


def test_bad_data_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no CounterFact file"):
        load_counterfact(tmp_path / "missing.json")
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(DataError, match="record 0"):
        load_counterfact(f)


def test_metrics_follow_the_definitions(tiny_factory, tmp_path):
    lm = tiny_factory("llama")
    f = tmp_path / "long.json"
    f.write_text(json.dumps(LONG_FORM))
    (case,) = load_counterfact(f)
    m = CounterFact(gen_tokens=8).score(lm, case)
    new, true = case.request.target, case.request.target_true
    s = score_continuations(lm, [(p, a) for p in case.paraphrase_prompts for a in (new, true)])
    ps = sum(float(s[2 * i].logprob > s[2 * i + 1].logprob) for i in range(2)) / 2
    pm = sum(s[2 * i].mean_prob - s[2 * i + 1].mean_prob for i in range(2)) / 2
    assert m["paraphrase_score"] == pytest.approx(ps)
    assert m["paraphrase_magnitude"] == pytest.approx(pm)
    n = score_continuations(lm, [(p, a) for p in case.neighborhood_prompts for a in (new, true)])
    assert m["neighborhood_score"] == pytest.approx(sum(float(n[2 * i + 1].logprob > n[2 * i].logprob) for i in range(2)) / 2)
    assert len(m["generations"]) == 2 and m["generation_entropy"] > 0
    # neighbourhood kept: the share of the true answers' tokens whose top-1 is the reference's (unedited) one
    assert m["neighborhood_top1"] == [list(n[2 * i + 1].top1) for i in range(2)] and m["neighborhood_kept"] == 1.0
    drifted = {"neighborhood_top1": [[t + 1 for t in m["neighborhood_top1"][0]], m["neighborhood_top1"][1]]}
    assert CounterFact().score(lm, case, drifted)["neighborhood_kept"] == pytest.approx(0.5)


def test_multi_token_answers_are_scored_token_by_token(smollm2):
    """log P(' New York City' | p) = Σ log P(token_i | p, tokens_<i): compare with a manual chain."""
    import torch

    prompt, answer = "The Statue of Liberty is in", " New York City"
    (c,) = score_continuations(smollm2, [(prompt, answer)])
    ids = smollm2.tokenizer(prompt + answer, return_tensors="pt")["input_ids"][0]
    n_prompt = len(smollm2.tokenizer(prompt)["input_ids"])
    assert c.n_tokens == len(ids) - n_prompt >= 2
    with torch.no_grad():
        logp = torch.log_softmax(smollm2.model(ids[None]).logits[0].float(), -1)
    manual = sum(logp[i - 1, ids[i]].item() for i in range(n_prompt, len(ids)))
    assert c.logprob == pytest.approx(manual, abs=1e-3)


def test_ngram_entropy_flags_repetition():
    assert ngram_entropy(["the the the the the the the the"]) < ngram_entropy(["a quick brown fox jumps over the lazy dog"])


def test_an_interrupted_run_resumes_without_losing_or_repeating(tiny_factory, data, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_factory("llama")
    fast = dict(layer=1, stats_tokens=2000, context_spec=((5, 2),), steps=3, gen_tokens=4)
    out = tmp_path / "run"
    calls = {"n": 0}
    real_score = CounterFact.score

    def flaky(self, lm_, case, reference=None):
        if reference is not None:  # scoring a case with its edit applied
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # the user pressed Ctrl-C while the third case was scored
        return real_score(self, lm_, case, reference)

    monkeypatch.setattr(CounterFact, "score", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate(lm, data / "counterfact-val.json", out, limit=4, **fast)
    lines = (out / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 2
    with open(out / "cases.jsonl", "a") as f:
        f.write('{"case_id": 999, "pre": {')  # a torn write, as a crash can leave
    monkeypatch.setattr(CounterFact, "score", real_score)
    summary = evaluate(lm, data / "counterfact-val.json", out, limit=4, **fast)
    records = [json.loads(l) for l in (out / "cases.jsonl").read_text().splitlines()]
    ids = [r["case_id"] for r in records]
    expected = [c.case_id for c in load_counterfact(data / "counterfact-val.json", 4)]
    assert ids == expected, "each case exactly once, in order"
    assert summary["n"] == 4
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk) >= {"n", "method", "model", "pre", "post", "cost"}
    keys = {"efficacy_score", "efficacy_magnitude", "paraphrase_score", "paraphrase_magnitude",
            "neighborhood_score", "neighborhood_magnitude", "neighborhood_kept", "score", "generation_entropy"}
    assert set(on_disk["pre"]) == keys and set(on_disk["post"]) == keys
    assert set(on_disk["cost"]) >= {"seconds_per_edit_median", "seconds_per_edit_max", "peak_rss_mb"}
    # resuming with another configuration is refused instead of mixing results
    from modeledit import ModelEditError

    with pytest.raises(ModelEditError, match="another configuration"):
        evaluate(lm, data / "counterfact-val.json", out, limit=4, **{**fast, "steps": 4})
    # a run begun before a hyper-parameter existed resumes while that one is at its default (what the code
    # did before it), and only then
    run = json.loads((out / "run.json").read_text())
    del run["hparams"]["token"]
    (out / "run.json").write_text(json.dumps(run))
    assert evaluate(lm, data / "counterfact-val.json", out, limit=4, **fast)["n"] == 4
    with pytest.raises(ModelEditError, match="another configuration"):
        evaluate(lm, data / "counterfact-val.json", out, limit=4, **{**fast, "token": "last"})
    # a setting whose default is a new behaviour (ROME's prompt_key: the paper's update before it) resumes
    # such a run only at the old behaviour
    del run["hparams"]["prompt_key"]
    (out / "run.json").write_text(json.dumps(run))
    with pytest.raises(ModelEditError, match="another configuration"):
        evaluate(lm, data / "counterfact-val.json", out, limit=4, **fast)
    assert evaluate(lm, data / "counterfact-val.json", out, limit=4, **{**fast, "prompt_key": False})["n"] == 4
