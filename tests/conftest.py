"""Shared fixtures: the real packaged SmolLM2, tiny random models of each supported family, the data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    """Benchmark data: $MODELEDIT_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("MODELEDIT_DATA")
    for d in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if d.is_dir():
            return d
    return None


@pytest.fixture(scope="session")
def data() -> Path:
    d = data_dir()
    if d is None:
        pytest.skip("benchmark data not found: set MODELEDIT_DATA or put it in ../shared/data")
    return d


@pytest.fixture(scope="session")
def smollm2():
    from modeledit import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    return smollm2.tokenizer


def _configs(vocab: int) -> dict:
    from transformers import (
        Gemma3TextConfig,
        GPT2Config,
        GPTJConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    # the default init (0.02) gives a 32-wide random model tiny MLP values v₀, and ROME's weight-decay
    # term ‖δ‖/‖v₀‖² then swamps its loss; a wider init gives values of a trained model's scale
    ids = dict(bos_token_id=0, eos_token_id=0, initializer_range=0.5)
    small = dict(**ids, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=vocab)
    return {
        "gpt2": GPT2Config(n_embd=32, n_layer=4, n_head=4, vocab_size=vocab, n_positions=256, **ids),
        "gptj": GPTJConfig(n_embd=32, n_layer=4, n_head=4, rotary_dim=8, vocab_size=vocab, n_positions=256, **ids),
        "gpt_neox": GPTNeoXConfig(**small, max_position_embeddings=256),
        "llama": LlamaConfig(**small, num_key_value_heads=2),
        "mistral": MistralConfig(**small, num_key_value_heads=2),
        "qwen2": Qwen2Config(**small, num_key_value_heads=2),
        "gemma3": Gemma3TextConfig(**small, num_key_value_heads=1, head_dim=8, sliding_window=8),
    }


FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "gemma3"]
EXPECTED_MLP_OUT = {
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "gptj": "transformer.h.{}.mlp.fc_out",
    "gpt_neox": "gpt_neox.layers.{}.mlp.dense_4h_to_h",
    "llama": "model.layers.{}.mlp.down_proj",
    "mistral": "model.layers.{}.mlp.down_proj",
    "qwen2": "model.layers.{}.mlp.down_proj",
    "gemma3": "model.layers.{}.mlp.down_proj",
}


@pytest.fixture(scope="session")
def tiny_factory(tokenizer):
    """tiny_factory(family) -> a LanguageModel with random weights (seeded) and SmolLM2's tokenizer."""
    from transformers import AutoModelForCausalLM

    from modeledit.llm.model import LanguageModel

    cache = {}

    def make(family: str):
        if family not in cache:
            torch.manual_seed(0)
            config = _configs(len(tokenizer))[family]
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            cache[family] = LanguageModel(model, tokenizer, f"tiny-{family}")
        return cache[family]

    return make


def state_bytes(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)
