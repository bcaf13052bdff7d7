"""Classifiers (Editable Neural Networks): requests, the edit loss, edits as patches, failed edits,
training on real Fashion-MNIST (normal and editable), evaluation with resume, sequences, the CLI."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modeledit import RequestError
from modeledit.images import Split
from modeledit.classifier.enn import ENN, ClassifierRequest, edit_loss
from modeledit.classifier.evaluate import evaluate_edits, evaluate_sequence, random_edits
from modeledit.classifier.model import Classifier, build, load_classifier
from modeledit.classifier.train import TrainConfig, loader_batches, train
from modeledit.cli import app
from modeledit.patch import Patch

from conftest import same_state, state_bytes


@pytest.fixture(scope="session")
def fashion():
    from modeledit.images import load_fashion_mnist
    from modeledit.errors import DataError

    try:
        return load_fashion_mnist()
    except DataError as exc:
        pytest.skip(str(exc))


def _small(fashion, n=6000):
    return Split(fashion.train.images[:n], fashion.train.labels[:n]), Split(fashion.test.images[:2000], fashion.test.labels[:2000])


@pytest.fixture(scope="session")
def trained(fashion):
    """A CNN trained normally for one pass over 6,000 Fashion-MNIST images."""
    tr, _ = _small(fashion)
    clf = build("cnn", fashion.classes)
    train(clf, loader_batches(tr.images, tr.labels, 64), TrainConfig(epochs=1))
    return clf


def test_the_edit_loss_is_zero_exactly_when_the_label_wins():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 2.5]])
    assert edit_loss(logits, torch.tensor([0, 0])).tolist() == [0.0, 2.5]
    assert edit_loss(logits, torch.tensor([2, 2])).tolist() == [2.5, 0.0]


def test_bad_requests_name_the_field(trained):
    x = torch.zeros(1, 28, 28)
    with pytest.raises(RequestError, match="label.*0..9"):
        ENN().edit(trained, ClassifierRequest(x, 10))
    with pytest.raises(RequestError, match="input.*shape"):
        ENN().edit(trained, ClassifierRequest(torch.zeros(28, 28), 3))
    with pytest.raises(RequestError, match="NaN"):
        ENN().edit(trained, ClassifierRequest(torch.full((1, 28, 28), float("nan")), 3))
    with pytest.raises(RequestError, match="max_steps"):
        ENN(max_steps=0)


def test_an_edit_is_a_patch_that_changes_the_prediction_and_reverts_bit_for_bit(trained, fashion, tmp_path):
    _, test = _small(fashion)
    x = test.images[0]
    before_label = int(trained.predict(x[None])[0])
    new = (before_label + 3) % 10
    saved = state_bytes(trained.module)
    patch = ENN(lr=0.01).edit(trained, ClassifierRequest(x, new))
    info = patch.entries[0].info
    assert info["success"] and 1 <= info["gradient_steps"] <= 10 and info["loss_last"] == 0.0
    assert same_state(trained.module, saved)  # computing the edit changes nothing
    assert set(patch.parameters) == set(trained.editable) == {"1.0.weight", "1.0.bias", "1.2.weight", "1.2.bias"}
    patch.save(tmp_path / "edit.safetensors")
    loaded = Patch.load(tmp_path / "edit.safetensors")
    with loaded.applied(trained.module):
        assert int(trained.predict(x[None])[0]) == new
    assert same_state(trained.module, saved)


def test_an_edit_that_does_not_succeed_is_reported_not_raised(trained, fashion, tmp_path):
    _, test = _small(fashion)
    saved = state_bytes(trained.module)
    label = (int(trained.predict(test.images[:1])[0]) + 1) % 10
    patch = ENN(lr=1e-9, max_steps=2).edit(trained, ClassifierRequest(test.images[0], label))
    info = patch.entries[0].info
    assert not info["success"] and info["gradient_steps"] == 2 and info["loss_last"] > 0
    assert same_state(trained.module, saved)
    s = evaluate_edits(trained, ENN(lr=1e-9, max_steps=2), test, [(0, label)], tmp_path / "e.jsonl")
    assert s["success_rate"] == 0 and s["failed_edits"][0]["loss_last"] > 0


def test_evaluation_resumes_without_losing_or_repeating_edits(trained, fashion, tmp_path):
    _, test = _small(fashion)
    edits = random_edits(test, 12, 10, seed=3)
    assert all(label != int(test.labels[i]) for i, label in edits) and len({i for i, _ in edits}) == 12
    path = tmp_path / "edits.jsonl"
    evaluate_edits(trained, ENN(lr=0.01), test, edits[:5], path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines) + "\n" + lines[-1][:20])  # an edit record torn by a crash
    full = evaluate_edits(trained, ENN(lr=0.01), test, edits, path)
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["edit_id"] for r in records] == list(range(12)) and records[:5] == [json.loads(x) for x in lines]
    assert full["n_edits"] == 12 and full["success_rate"] == 1.0 and full["drawdown"] > 0
    assert abs(full["base_error"] - trained.error(test.images, test.labels)) < 1e-9


def test_a_sequence_of_edits_reports_cumulative_drawdown_and_restores_the_weights(trained, fashion):
    _, test = _small(fashion)
    saved = state_bytes(trained.module)
    seq = evaluate_sequence(trained, ENN(lr=0.01), test, random_edits(test, 8, 10, seed=5))
    assert seq["n_edits"] == 8 and len(seq["cumulative_drawdown"]) == 8 and seq["succeeded"] >= 6
    assert seq["final_drawdown"] > 0
    # a share of the 8 edits, and at least the last one (it has just succeeded) still holds at the end
    held = seq["still_holding_at_end"] * 8
    assert abs(held - round(held)) < 1e-9 and round(held) >= 1
    assert same_state(trained.module, saved)


def test_editable_training_makes_edits_cost_less_accuracy(fashion, tmp_path):
    """The paper's claim, small: same data, seed and steps; the editable model's edits (its learnt step
    size) disturb other test images less than fine-tuning edits of the normally trained model."""
    from modeledit.classifier.evaluate import tune_edit_lr

    tr, test = _small(fashion, 10_000)
    held_out = Split(fashion.train.images[-2000:], fashion.train.labels[-2000:])
    out = {}
    for editable in (False, True):
        clf = build("cnn", fashion.classes)
        train(clf, loader_batches(tr.images, tr.labels, 64), TrainConfig(epochs=2, editable=editable))
        lr = clf.edit_lr if editable else tune_edit_lr(clf, ENN, held_out, n_edits=30)[0]
        out[editable] = evaluate_edits(clf, ENN(lr=lr), test, random_edits(test, 60, 10), tmp_path / f"{editable}.jsonl")
    assert out[True]["success_rate"] >= 0.95
    assert out[True]["drawdown"] < out[False]["drawdown"]


def test_any_module_and_loader_a_user_brings(tmp_path):
    """A non-Sequential module, a torch DataLoader, a chosen editable parameter set, save and load."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 16)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            return self.out(torch.relu(self.body(x)))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    clf = Classifier(Net(), ("a", "b", "c"), (8,), editable=("out.weight", "out.bias"))
    assert clf.split() is None
    train(clf, lambda epoch: loader, TrainConfig(epochs=10, lr=1e-2, editable=True))
    assert clf.error(x, y) < 0.2 and clf.edit_lr != 0.1
    patch = ENN(max_steps=10, lr=0.5).edit(clf, ClassifierRequest(x[0], (int(y[0]) + 1) % 3))
    assert patch.entries[0].info["success"] and set(patch.parameters) == {"out.weight", "out.bias"}
    clf.save(tmp_path / "net")
    again = load_classifier(tmp_path / "net", module=Net())
    assert again.editable == clf.editable and again.edit_lr == clf.edit_lr and torch.equal(again.predict(x), clf.predict(x))
    with pytest.raises(RequestError, match="editable"):
        Classifier(Net(), ("a", "b", "c"), (8,), editable=("nope.weight",))


def test_cli_bad_input_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["classifier", "train", "--data", "cifar-100", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "unknown data set 'cifar-100'" in r.output
    r = CliRunner().invoke(app, ["classifier", "eval", "--model", str(tmp_path), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "classifier.json" in r.output
