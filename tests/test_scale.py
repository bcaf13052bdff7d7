"""Beyond one process: work spread over a real local Ray runtime with 2 workers (one runtime for the module),
on a tiny model that the workers load from a directory; and a model spread over devices by a device map
(CPU layers and layers offloaded to disk: what accelerate can do on a machine without a GPU)."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import torch
from typer.testing import CliRunner

from modeledit import RequestError, ScaleError, evaluate
from modeledit.cli import app
from modeledit.evaluation import run_evaluation
from modeledit.llm.bench import get_benchmark
from modeledit.llm.model import load_model
from modeledit.methods import get_method

FAST_MEMIT = dict(layers=(1, 2), stats_tokens=2000, context_spec=((5, 2),), steps=3)
LIMIT, BATCH = 8, 2  # four batches: work for both workers, and some left when one is killed


def timeless(record: dict) -> dict:
    """A record without what depends on how the run went rather than on what it found: wall times, and how
    many targets an earlier run had already left on disk (the one-process run computes them; the workers
    then read them back, the same bits)."""
    if isinstance(record, dict):
        return {k: timeless(v) for k, v in record.items() if "seconds" not in k and k != "targets_from_disk"}
    if isinstance(record, list):
        return [timeless(v) for v in record]
    return record


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One statistics cache for the module, seen by the workers too (they are given this process's)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELEDIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def tiny_dir(tiny_factory, tmp_path_factory):
    """The tiny llama saved to a directory: workers rebuild it by path, as they would any model."""
    lm = tiny_factory("llama")
    d = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny(tiny_dir, env):
    return load_model(str(tiny_dir), device="cpu")


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="Ray is installed by `make install` (the test extra)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_process(tiny, data, tmp_path_factory):
    """The single-process evaluation every spread run must equal."""
    out = tmp_path_factory.mktemp("one-process")
    summary = evaluate(tiny, data / "counterfact-val.json", out, method="memit", limit=LIMIT, batch_size=BATCH, **FAST_MEMIT)
    return summary, out


def _spread_run(tiny, data, out, compute, progress=None):
    bench = get_benchmark("counterfact")
    cases = bench.load(data / "counterfact-val.json", LIMIT)
    return run_evaluation(tiny, get_method("memit", **FAST_MEMIT), bench, cases, out, batch_size=BATCH, compute=compute, progress=progress)


def _same_run(spread: tuple, single: tuple) -> None:
    (s_sum, s_out), (o_sum, o_out) = spread, single
    assert {k: v for k, v in s_sum.items() if k != "cost"} == {k: v for k, v in o_sum.items() if k != "cost"}
    got, want = records(s_out), records(o_out)
    assert sorted(r["case_id"] for r in got) == [r["case_id"] for r in want], "each case exactly once"
    by_id = {r["case_id"]: timeless(r) for r in got}
    assert [by_id[r["case_id"]] for r in want] == [timeless(r) for r in want], "the records of one process, in any order"
    assert (s_out / "run.json").read_text() == (o_out / "run.json").read_text()


def test_evaluation_on_two_workers_equals_one_process(tiny, data, tmp_path, ray_runtime, one_process):
    out = tmp_path / "spread"
    summary = evaluate(tiny, data / "counterfact-val.json", out, method="memit", limit=LIMIT, batch_size=BATCH, workers=2, **FAST_MEMIT)
    _same_run((summary, out), one_process)
    again = evaluate(tiny, data / "counterfact-val.json", out, method="memit", limit=LIMIT, batch_size=BATCH, workers=2, **FAST_MEMIT)
    assert len(records(out)) == LIMIT and again["n"] == LIMIT, "a finished run is not run again"
    with pytest.raises(Exception, match="another configuration"):
        evaluate(tiny, data / "counterfact-val.json", out, method="memit", limit=LIMIT, batch_size=1, workers=2, **FAST_MEMIT)


def test_workers_compute_with_this_processs_thread_count(tiny, ray_runtime):
    """A matmul's bits depend on how many threads split it: each worker takes the driver's count, whatever
    share of the cores Ray gives it, so that its numbers are this process's."""
    from modeledit.scale.runtime import workers

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with workers(tiny, 2) as pool:
            assert ray_runtime.get([a.threads.remote() for a in pool.actors]) == [3, 3]
    finally:
        torch.set_num_threads(before)


def _killer(compute):
    """A progress callback that kill -9s every worker when the first record is written (the next groups
    are running on them then)."""
    killed = []

    def progress(done, total):
        if not killed:
            for pid in compute.pids:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    return progress, killed


def test_workers_killed_mid_run_are_restarted_and_the_run_finishes(tiny, data, tmp_path, ray_runtime, one_process):
    from modeledit.scale import RayRecords

    compute = RayRecords(2, retries=1)
    progress, killed = _killer(compute)
    out = tmp_path / "killed"
    summary = _spread_run(tiny, data, out, compute, progress)
    assert len(killed) == 2
    _same_run((summary, out), one_process)


def test_a_run_stopped_by_dead_workers_resumes_with_nothing_lost_or_repeated(tiny, data, tmp_path, ray_runtime, one_process):
    from modeledit.scale import RayRecords

    compute = RayRecords(2, retries=0)
    progress, killed = _killer(compute)
    out = tmp_path / "stopped"
    with pytest.raises(ScaleError, match="run the same command again to resume"):
        _spread_run(tiny, data, out, compute, progress)
    assert killed
    kept = records(out)
    assert 0 < len(kept) < LIMIT and len({r["case_id"] for r in kept}) == len(kept)
    summary = _spread_run(tiny, data, out, RayRecords(2))
    _same_run((summary, out), one_process)


def test_statistics_on_two_workers_equal_one_process_and_share_its_cache(tiny, tiny_dir, ray_runtime, monkeypatch):
    from modeledit.llm import stats as stats_mod
    from modeledit.llm.corpus import resolve_corpus
    from modeledit.llm.stats import StatsConfig, collect_second_moments, second_moments
    from modeledit.scale import RayMoments

    cfg = StatsConfig(n_tokens=3000, batch_tokens=512)  # several batches per shard
    corpus = resolve_corpus(None)
    want = collect_second_moments(tiny, [0, 1, 2, 3], corpus, cfg)
    got = RayMoments(2)(tiny, [0, 1, 2, 3], corpus, cfg)
    for layer in range(4):
        assert got[layer][1] == want[layer][1] > 2000
        assert torch.allclose(got[layer][0], want[layer][0], rtol=1e-12, atol=1e-15), "equal up to float64 round-off"
    # the command line: the same statistics, cached where one process caches them
    result = CliRunner().invoke(app, ["stats", "--model", str(tiny_dir), "--layers", "0,3", "--tokens", "3000", "--workers", "2"])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(stats_mod, "collect_second_moments", lambda *a, **k: pytest.fail("the cache should answer"))
    cached = second_moments(tiny, [0, 3], StatsConfig(n_tokens=3000))
    one = collect_second_moments(tiny, [0, 3], corpus, StatsConfig(n_tokens=3000))
    for layer in (0, 3):  # stored in float32, each batch's kᵀk a float32 product whose rounding depends on the threads
        scale = float(one[layer][0].abs().max())
        assert torch.allclose(cached[layer].double(), one[layer][0], rtol=1e-5, atol=1e-6 * scale)


def test_tracing_many_facts_on_two_workers_writes_the_records_of_one_process(tiny, data, tmp_path, ray_runtime):
    from modeledit.api import trace_facts
    from modeledit.llm.trace_many import KnownFact, knows

    # facts the tiny random model "knows": its own greedy next token as the answer
    rows = json.loads((data / "known_1000.json").read_text())[:120]
    facts = []
    for r in rows:
        ids = tiny.tokenizer(r["prompt"], return_tensors="pt")["input_ids"]
        nxt = tiny.tokenizer.decode(tiny.model(ids).logits[0, -1].argmax())
        facts.append(KnownFact(r["known_id"], r["prompt"], r["subject"], nxt if nxt.startswith(" ") else " " + nxt))
    known = [f for f, k in zip(facts, knows(tiny, facts)) if k]
    assert len(known) >= 4
    chosen = [f for f in facts if f in known[:4]] + [f for f in facts if f not in known][:40]  # > 32 facts: two runs
    chosen.sort(key=lambda f: facts.index(f))
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([{"known_id": f.known_id, "prompt": f.prompt, "subject": f.subject, "attribute": f.answer} for f in chosen]))
    one = trace_facts(tiny, path, tmp_path / "one", limit=3, samples=2)
    spread = trace_facts(tiny, path, tmp_path / "spread", limit=3, samples=2, workers=2)
    assert timeless(records(tmp_path / "spread")) == timeless(records(tmp_path / "one"))
    assert one["n_traced"] == spread["n_traced"] == 3 and one["subject_last"] == spread["subject_last"]


def test_without_ray_asking_for_workers_is_one_clear_error(tiny_dir, data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    lm = load_model(str(tiny_dir), device="cpu")
    with pytest.raises(ScaleError, match=r"pip install 'modeledit\[scale\]'"):
        evaluate(lm, data / "counterfact-val.json", tmp_path / "run", limit=2, workers=2)
    assert not (tmp_path / "run").exists(), "said before any work"
    result = CliRunner().invoke(app, ["eval", "counterfact", "--data", str(data / "counterfact-val.json"), "--out", str(tmp_path / "cli"),
                                      "--model", str(tiny_dir), "--limit", "2", "--workers", "2"])
    assert result.exit_code == 2 and "modeledit[scale]" in " ".join(result.output.split())


def test_sequential_evaluation_with_workers_is_refused(tiny_dir, data, tmp_path):
    lm = load_model(str(tiny_dir), device="cpu")
    with pytest.raises(RequestError, match="sequential evaluation is single-process"):
        evaluate(lm, data / "counterfact-val.json", tmp_path / "run", limit=2, sequential=True, workers=2)
    result = CliRunner().invoke(app, ["eval", "counterfact", "--data", str(data / "counterfact-val.json"), "--out", str(tmp_path / "cli"),
                                      "--model", str(tiny_dir), "--limit", "2", "--sequential", "--workers", "2"])
    assert result.exit_code == 2 and "single-process" in " ".join(result.output.split())
    with pytest.raises(RequestError, match="positive number of workers"):
        evaluate(lm, data / "counterfact-val.json", tmp_path / "run", limit=2, workers=0)


def test_a_model_built_in_memory_cannot_be_sent_to_workers(tiny_factory, data, tmp_path, ray_runtime):
    with pytest.raises(ScaleError, match="save it"):
        evaluate(tiny_factory("llama"), data / "counterfact-val.json", tmp_path / "run", method="memit", limit=2, batch_size=2,
                 workers=2, **FAST_MEMIT)


# -- a model spread over devices ------------------------------------------------------------------------

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
         "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}


def test_a_model_split_over_devices_edits_as_on_one_device(tiny_dir, tmp_path, env):
    """Layers 2-3 offloaded to disk (their weights read in for each pass, the parameters on `meta`): the
    identity, statistics, edits and scores of the split model are those of the whole one, patches move
    between the two layouts, and what cannot be edited in place (an offloaded layer) is a clear error."""
    from modeledit import Patch, PatchError, Request, edit
    from modeledit.llm.score import score_continuations
    from modeledit.llm.stats import StatsConfig, second_moments

    whole = load_model(str(tiny_dir), device="cpu")
    split = load_model(str(tiny_dir), device_map=json.dumps(SPLIT))
    assert split.model.get_parameter("model.layers.3.mlp.down_proj.weight").device.type == "meta"
    assert split.device.type == "cpu" and split.identity == whole.identity
    cfg = StatsConfig(n_tokens=1500)
    a, b = second_moments(whole, [1, 3], cfg), second_moments(split, [1, 3], cfg)  # the second reads the first's cache
    from modeledit.llm.corpus import resolve_corpus
    from modeledit.llm.stats import collect_second_moments

    fresh = collect_second_moments(split, [1, 3], resolve_corpus(None), cfg)
    for layer in (1, 3):
        assert torch.equal(a[layer], b[layer])
        assert torch.allclose(fresh[layer][0].float(), a[layer], rtol=1e-5, atol=1e-6), "read through the offloaded layers too"

    req = Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
    # float32: under "auto" an AMX CPU optimises in bfloat16, and offloaded layers keep their own dtype
    hp = dict(layer=1, stats_tokens=1500, context_spec=((5, 2),), steps=4, precision="float32")
    p_whole, p_split = edit(whole, req, **hp), edit(split, req, **hp)
    name = whole.layout.weight_name(1)
    d_whole, d_split = p_whole.entries[0].deltas[name], p_split.entries[0].deltas[name]
    assert torch.allclose(d_whole.materialize(whole.model.get_parameter(name)), d_split.materialize(whole.model.get_parameter(name)), atol=1e-5)
    p_split.save(tmp_path / "split.safetensors")
    moved = Patch.load(tmp_path / "split.safetensors")
    pairs = [(req.text, " Rome"), ("The Louvre is located in the city of", " Paris")]
    with moved.applied(whole):  # saved on one layout, applied on another
        s_whole = score_continuations(whole, pairs)
    with p_whole.applied(split):
        s_split = score_continuations(split, pairs)
    assert [round(s.logprob, 4) for s in s_whole] == [round(s.logprob, 4) for s in s_split]

    with pytest.raises(RequestError, match="offloaded"):
        edit(split, req, **{**hp, "layer": 3})
    with pytest.raises(PatchError, match="offloaded"):
        edit(whole, req, **{**hp, "layer": 3}).apply(split)


def test_device_map_and_dtype_options(tiny_dir, env):
    auto = load_model(str(tiny_dir), device_map="auto", dtype="bfloat16")
    assert {p.device.type for p in auto.model.parameters()} == {"cpu"}  # no GPU here: all of it on the CPU
    assert auto.model.get_parameter(auto.layout.weight_name(0)).dtype == torch.bfloat16
    assert auto.load_args == {"name": str(tiny_dir), "device": None, "dtype": "bfloat16", "device_map": "auto"}
    with pytest.raises(RequestError, match="device-map"):
        load_model(str(tiny_dir), device_map="{not json")
    with pytest.raises(RequestError, match="dtype"):
        load_model(str(tiny_dir), dtype="int8")
    with pytest.raises(RequestError, match="not both"):
        load_model(str(tiny_dir), device="cpu", device_map="auto")
