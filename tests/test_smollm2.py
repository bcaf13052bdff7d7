"""The packaged SmolLM2-135M, for real: loading, one ROME edit, the CLI round trip."""

import json
import time

import pytest
import torch
from typer.testing import CliRunner

from modeledit import ModelNotFoundError, Request, edit, load_model
from modeledit.cli import app
from modeledit.llm.score import score_continuations

from conftest import same_state, state_bytes

REQ = Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
# statistics over 20k tokens keep the tests quick; the benchmark uses the default 100k
FAST = dict(stats_tokens=20_000)


def test_the_packaged_model_is_converted_once_and_loads_from_the_cache(smollm2):
    from modeledit.llm.packaged import packaged_model_dir

    d = packaged_model_dir("smollm2-135m")
    assert (d / "config.json").exists() and list(d.glob("*.safetensors"))
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    t = time.perf_counter()
    again = load_model("smollm2-135m", device="cpu")
    assert time.perf_counter() - t < 30
    assert again.identity == smollm2.identity
    assert "Paris" in smollm2.generate(REQ.text, 4)


def test_rome_moves_the_eiffel_tower_and_keeps_the_louvre(smollm2):
    before = state_bytes(smollm2.model)
    patch = edit(smollm2, REQ, **FAST)
    from modeledit.llm.rome import default_layer

    assert patch.entries[0].info["layer"] == default_layer(smollm2)[0]  # 5 (its edit sweep's) unless traced
    assert same_state(smollm2.model, before)
    pairs = [
        (REQ.text, " Rome"), (REQ.text, " Paris"),
        ("Where is the Eiffel Tower? It is in the city of", " Rome"), ("Where is the Eiffel Tower? It is in the city of", " Paris"),
        ("The Louvre is located in the city of", " Paris"), ("The Louvre is located in the city of", " Rome"),
    ]
    pre = score_continuations(smollm2, pairs)
    with patch.applied(smollm2.model):
        post = score_continuations(smollm2, pairs)
        text = smollm2.generate(REQ.text, 4)
    assert pre[1].logprob > pre[0].logprob  # unedited: Paris
    assert post[0].logprob > post[1].logprob  # efficacy
    assert post[2].logprob > post[3].logprob  # generality: a paraphrase
    assert post[4].logprob > post[5].logprob  # locality: the Louvre stays in Paris
    assert "Rome" in text
    assert same_state(smollm2.model, before)
    assert patch.entries[0].info["per_request"]["took"] == [True]
    assert patch.entries[0].info["guarded"] == {}  # SmolLM2's MLP output reaches the residual as it is: the paper's ROME
    assert patch.entries[0].info["key_reach"] == pytest.approx(1.0, abs=0.2)  # "The Eiffel Tower" reads alike in every context


def test_the_guard_keeps_the_subjects_the_update_reaches_from_taking_the_new_target(smollm2):
    """Plain ROME's Eiffel Tower → Rome at layer 10 (the paper's depth; at 5, SmolLM2's default, the spill is
    a third as large) makes other landmarks say Rome too (log p rises by nats); with guard_subjects the
    value optimisation sees the update's share at those subjects and holds them."""
    from modeledit.llm.request import fill

    FAST = dict(globals()["FAST"], layer=10)
    guarded = edit(smollm2, REQ, guard_subjects=8, **FAST)
    subjects = list(guarded.entries[0].info["guarded"])
    assert len(subjects) == 8 and all("Eiffel" not in s for s in subjects)
    pairs = [(fill(REQ.prompt, s), " Rome") for s in subjects]

    def lp():
        return [c.logprob / c.n_tokens for c in score_continuations(smollm2, pairs)]

    base = lp()
    rises = {}
    for name, patch in (("plain", edit(smollm2, REQ, **FAST)), ("guarded", guarded)):
        with patch.applied(smollm2.model):
            rises[name] = [a - b for a, b in zip(lp(), base)]
            rome, paris = score_continuations(smollm2, [(REQ.text, " Rome"), (REQ.text, " Paris")])
        assert rome.logprob > paris.logprob and rome.mean_prob > 0.5, name  # the edit holds either way
    mean = {k: sum(v) / len(v) for k, v in rises.items()}
    assert mean["plain"] > 1.0, rises  # the spill the guard is for
    assert mean["guarded"] < 0.25 * mean["plain"] and max(rises["guarded"]) < 1.0, rises


def test_a_subject_first_prompt_is_reached_whole_by_the_prompt_key(smollm2):
    """SmolLM2 adds no BOS: "Big Ben ..." puts "Big" at position 0 while every context row has " Big". The
    paper's update, written at the averaged key, reaches the prompt's own key by a fifth: the edit does not
    take and the outcome says why. Ours (prompt_key, the default) reaches it whole, and the edit takes."""
    from modeledit.llm.outcome import not_taken

    req = Request("{} is located in the city of", "Big Ben", " Rome", " London")
    paper = edit(smollm2, req, prompt_key=False, **FAST)
    assert paper.entries[0].info["key_reach"] < 0.5
    ((_, why),) = not_taken(paper)
    assert "own key at 0." in why
    ours = edit(smollm2, req, **FAST)
    assert ours.entries[0].info["key_reach"] == pytest.approx(1.0, abs=1e-3) and not not_taken(ours)
    assert ours.entries[0].info["per_request"]["target_prob_after"][0] > 0.5


def test_an_edit_that_cannot_take_in_one_step_says_so(smollm2, tmp_path):
    """One gradient step cannot move Paris to Rome: the API marks the request, the CLI says why in one line
    and exits 3, and the saved patch keeps the outcome."""
    from modeledit import Patch
    from modeledit.llm.outcome import not_taken

    patch = edit(smollm2, REQ, steps=1, **FAST)
    ((req, why),) = not_taken(patch)
    assert req["target"] == " Rome" and "greedy continuation" in why and "steps=2" in why
    info = patch.entries[0].info["per_request"]
    assert info["took"] == [False] and info["target_prob_after"][0] < 0.5 and "Paris" in info["model_continuation"][0]

    saved = tmp_path / "weak.safetensors"
    r = CliRunner().invoke(app, ["edit", "--prompt", REQ.prompt, "--subject", REQ.subject, "--target", " Rome",
                                 "--target-true", " Paris", "--set", "steps=1", "--stats-tokens", "20000", "--save", str(saved)])
    assert r.exit_code == 3, r.output
    assert "did not take" in r.output and "all 1 optimisation steps used" in r.output
    assert not_taken(Patch.load(saved))


def test_cli_edit_save_show_apply_revert_round_trip(smollm2, tmp_path):
    runner = CliRunner()
    p = tmp_path / "eiffel.safetensors"
    r = runner.invoke(app, ["edit", "--prompt", "{} is located in the city of", "--subject", "The Eiffel Tower",
                            "--target", " Rome", "--target-true", " Paris", "--stats-tokens", "20000", "--save", str(p)])
    assert r.exit_code == 0, r.output
    assert "Rome" in r.output and "layer 5" in r.output and p.exists()
    r = runner.invoke(app, ["patch", "show", str(p)])
    assert r.exit_code == 0 and '"method": "rome"' in r.output and "down_proj" in r.output
    edited = tmp_path / "edited"
    r = runner.invoke(app, ["patch", "apply", str(p), "--model", "smollm2-135m", "--out", str(edited)])
    assert r.exit_code == 0, r.output
    lm_edited = load_model(str(edited), device="cpu")
    (rome, paris) = score_continuations(lm_edited, [(REQ.text, " Rome"), (REQ.text, " Paris")])
    assert rome.logprob > paris.logprob
    restored = tmp_path / "restored"
    r = runner.invoke(app, ["patch", "revert", str(p), "--model", str(edited), "--out", str(restored)])
    assert r.exit_code == 0, r.output
    lm_restored = load_model(str(restored), device="cpu")
    base = smollm2.model.state_dict()
    assert all(torch.equal(v, base[k]) for k, v in lm_restored.model.state_dict().items()), "bit-exact revert"
    # applying the patch to the edited model (another base) is refused
    r = runner.invoke(app, ["patch", "apply", str(p), "--model", str(edited), "--out", str(tmp_path / "twice")])
    assert r.exit_code == 2 and "different base model" in r.output


def test_the_demo_moves_the_eiffel_tower(smollm2):
    """The README's main job, as a user runs it."""
    r = CliRunner().invoke(app, ["demo"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "Rome" in out and "the new answer beats the old one after the edit for 1 of 1 request(s)" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--prompt", "The Eiffel Tower is in", "--subject", "The Eiffel Tower", "--target", " Rome"], "no '{}'"),
        (["--prompt", "{} is in", "--subject", "The Eiffel Tower", "--target", ""], "target: is empty"),
        (["--prompt", "{} is in", "--subject", "X", "--target", " Rome", "--model", "no-such-model-xyz"], "unknown model"),
    ],
)
def test_cli_bad_input_is_one_clear_error(args, words):
    r = CliRunner().invoke(app, ["edit", *args])
    assert r.exit_code == 2
    assert words in r.output


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        load_model("no-such-model-xyz")


CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens there: the hub "cannot be reached", on any machine


def test_an_unknown_name_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", CLOSED_PORT)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelNotFoundError, match=r"not in the hub's cache \(the hub cannot be reached from here: http://127.0.0.1:9"):
        load_model("someone/no-such-model-xyz")


@pytest.mark.parametrize("hub", ["told offline", "unreachable"])
def test_hub_names_load_through_the_hub_cache(tiny_factory, tmp_path, monkeypatch, hub):
    """A hub name resolves through huggingface_hub's cache (here filled by hand): offline when told so,
    and when the hub does not answer."""
    lm = tiny_factory("qwen2")
    snap = tmp_path / "hub" / "models--someone--tiny-qwen2" / "snapshots" / ("0" * 40)
    lm.model.save_pretrained(snap)
    lm.tokenizer.save_pretrained(snap)
    (tmp_path / "hub" / "models--someone--tiny-qwen2" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-qwen2" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    if hub == "told offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(c, "ENDPOINT", CLOSED_PORT)
    got = load_model("someone/tiny-qwen2", device="cpu")
    assert got.layout.mlp_out[0] == "model.layers.0.mlp.down_proj"
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in got.model.state_dict().items())


def test_sequential_edits_compose_into_one_patch(smollm2):
    """Edit, apply, edit the edited model, compose: the composed patch on the base model holds both."""
    from modeledit import Patch

    first = Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
    second = Request("{} is located in the city of", "The Louvre", " London", " Paris")
    before = state_bytes(smollm2.model)
    p1 = edit(smollm2, first, **FAST)
    with p1.applied(smollm2.model):
        p2 = edit(smollm2, second, **FAST)
    both = Patch.compose(p1, p2)
    pairs = [(first.text, " Rome"), (first.text, " Paris"), (second.text, " London"), (second.text, " Paris")]
    with both.applied(smollm2.model):
        s = score_continuations(smollm2, pairs)
    assert s[0].logprob > s[1].logprob and s[2].logprob > s[3].logprob
    assert same_state(smollm2.model, before)
