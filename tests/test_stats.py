import pytest
import torch

from modeledit.llm import stats as stats_mod
from modeledit.llm.corpus import files_corpus, resolve_corpus
from modeledit.llm.hooks import Hooks
from modeledit.llm.stats import StatsConfig, collect_second_moments, second_moments


def test_one_pass_matches_a_direct_computation(tiny_factory, tmp_path):
    lm = tiny_factory("gpt_neox")
    texts = ["The cat sat on the mat.", "A longer text about the history of Paris and its towers.", "Short one."]
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(texts))
    corpus = files_corpus([f])
    cfg = StatsConfig(corpus=str(f), n_tokens=10_000, batch_tokens=16)  # tiny budget: several batches
    got = collect_second_moments(lm, [0, 2], corpus, cfg)
    for layer in (0, 2):
        keys = []
        for t in texts:
            ids = lm.tokenizer(t, return_tensors="pt")
            with Hooks(lm.model) as h:
                rec = h.record(lm.layout.mlp_out[layer], inputs=True, outputs=False)
                lm.model(**ids)
            keys.append(rec.input[0])
        k = torch.cat(keys).double()
        C, n = got[layer]
        assert n == k.shape[0]
        assert torch.allclose(C, k.T @ k / n, rtol=1e-5, atol=1e-5)


def test_statistics_are_cached_and_reused(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELEDIT_CACHE", str(tmp_path))
    lm = tiny_factory("llama")
    cfg = StatsConfig(n_tokens=2000)
    calls = []
    real = stats_mod.collect_second_moments

    def counting(lm_, layers, corpus, cfg_, progress=None):
        calls.append(list(layers))
        return real(lm_, layers, corpus, cfg_, progress)

    monkeypatch.setattr(stats_mod, "collect_second_moments", counting)
    a = second_moments(lm, [1, 3], cfg)
    assert calls == [[1, 3]], "both layers in one pass"
    b = second_moments(lm, [1, 3], cfg)
    assert calls == [[1, 3]], "the second call reads the cache"
    assert all(torch.equal(a[l].float(), b[l].float()) for l in (1, 3))
    second_moments(lm, [1, 2], cfg)
    assert calls[-1] == [2], "only the missing layer is computed"
    second_moments(lm, [1], StatsConfig(n_tokens=1000))
    assert calls[-1] == [1], "another sample count is another cache entry"


def test_the_embedded_corpus_is_real_text():
    corpus = resolve_corpus(None)
    texts = [t for _, t in zip(range(200), corpus.texts())]
    assert len(texts) == 200 and sum(len(t.split()) for t in texts) > 10_000
    assert corpus.id.startswith("wiki-offline")
    assert texts == [t for _, t in zip(range(200), resolve_corpus("wiki-offline").texts())]


def test_a_missing_corpus_file_is_a_clear_error(tmp_path):
    from modeledit import DataError

    with pytest.raises(DataError, match="does not exist"):
        resolve_corpus([str(tmp_path / "nope.txt")])
