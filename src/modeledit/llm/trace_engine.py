"""The engine of causal tracing: one prompt's clean and corrupted runs, and restorations scored against them.

Every restoration is computed without recomputing what it cannot change:
- layers below the lowest restored one are skipped: their output is the corrupted run's, fed in;
- tokens before the first restored token are not recomputed: their keys and values are the corrupted
  run's, handed in as a KV cache;
- tokens before the subject are untouched by the noise, so restoring them changes nothing: their cells
  are the corrupted probability (no forward pass);
- restorations are batched with the noisy samples, in chunks chosen to waste the least compute.

A multi-token answer is scored teacher-forced: its probability is the product of its tokens' probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from modeledit.errors import RequestError
from modeledit.llm.hooks import Hooks
from modeledit.llm.model import LanguageModel
from modeledit.llm.precision import check_precision
from modeledit.llm.trace_prompt import TracePrompt

KINDS = ("hidden", "mlp", "attn")


def default_window(n_layers: int) -> int:
    """The paper's window of 10 layers for GPT-2 XL's 48, scaled to the model's depth (6 of 30)."""
    return max(1, min(10, round(10 * n_layers / 48)))


@dataclass(frozen=True)
class TraceConfig:
    samples: int = 10  # noisy runs averaged per cell
    noise: float | None = None  # std of the noise; None: noise_factor × std of subject token embeddings
    noise_factor: float = 3.0
    window: int | None = None  # layers restored together for MLP / attention; None: default_window
    seed: int = 1
    max_batch_tokens: int = 16384  # tokens in one forward pass (memory cap)
    # "bfloat16" runs the passes under autocast: on SmolLM2 and a 2-core AMX CPU 1.2-1.5x faster, with
    # probabilities within 0.016 of float32 ones (benchmarks/trace_smollm2.py prints both)
    precision: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise RequestError("samples", f"must be a positive integer, got {self.samples!r}")
        if self.noise is not None and not (self.noise > 0 and self.noise < float("inf")):
            raise RequestError("noise", f"must be a positive number, got {self.noise!r}")
        if not (self.noise_factor > 0 and self.noise_factor < float("inf")):
            raise RequestError("noise_factor", f"must be a positive number, got {self.noise_factor!r}")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise RequestError("window", f"must be a positive integer, got {self.window!r}")
        check_precision(self.precision, choices=("float32", "bfloat16"))


@dataclass(frozen=True)
class Restore:
    """Put back the clean outputs of ``kind`` modules at ``layers``, at ``tokens`` (input positions)."""

    kind: str
    layers: tuple[int, ...]
    tokens: tuple[int, ...]


def window_layers(layer: int, window: int, n_layers: int) -> tuple[int, ...]:
    """The layers restored together around ``layer``: [layer − w/2, layer + w/2), clipped."""
    return tuple(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


# --------------------------------------------------------------------------------------------------
# the clean and corrupted runs, and restorations


class CausalTracer:
    """The clean and corrupted runs of one prompt; ``probs`` scores restorations against them."""

    overhead = 8  # cost of one forward pass beyond its tokens, in tokens per sample (measured, 2 CPU cores)

    def __init__(self, lm: LanguageModel, prompt: TracePrompt, noise: float, config: TraceConfig = TraceConfig()):
        self.lm, self.prompt, self.config = lm, prompt, config
        self.noise_level = noise
        layout, dev = lm.layout, lm.device
        self.modules = {"hidden": layout.blocks, "mlp": layout.mlp, "attn": layout.attn}
        self.ids = torch.tensor(prompt.ids, device=dev)
        self.targets = torch.tensor(prompt.target_ids, device=dev)
        n, T, H = config.samples, len(prompt.ids), layout.hidden_size
        a, b = prompt.subject_span
        g = torch.Generator().manual_seed(config.seed)
        noise_t = torch.zeros((n, T, H))
        noise_t[:, a:b] = torch.randn((n, b - a, H), generator=g) * noise
        embed_dtype = lm.model.get_submodule(layout.embed).weight.dtype
        self.noise = noise_t.to(dev, embed_dtype)
        window = getattr(lm.config, "sliding_window", None)
        # a sliding-window cache keeps only the last window of a prefix: cut prompts only when they fit
        self.can_cut = not window or 2 * T < window

        with torch.no_grad(), self._autocast(), Hooks(lm.model) as hooks:
            recs = {k: [hooks.record(m) for m in names] for k, names in self.modules.items()}
            first = hooks.record(layout.blocks[0], keep_raw=True)
            self.clean_prob = float(self._score(self._forward(self.ids[None], 0))[0])
        self.clean = {k: [r.output[0].detach() for r in rs] for k, rs in recs.items()}
        self.like = first.raw_output

        with torch.no_grad(), self._autocast(), Hooks(lm.model) as hooks:
            blocks = [hooks.record(m) for m in layout.blocks]
            hooks.edit_output(layout.embed, lambda e: e + self.noise.to(e.dtype))
            hidden, kv = lm.run(self.ids.expand(n, T), use_cache=self.can_cut)
            self.corrupted_prob = float(self._score(hidden).mean())
        self.corrupted_hidden = [r.output.detach() for r in blocks]  # block outputs, (samples, T, H)
        self.kv = [(lay.keys.detach(), lay.values.detach()) for lay in kv.layers] if self.can_cut and kv is not None else None

    # ---- pieces

    def _autocast(self):
        # autocast here, not precision.computing_in as the value optimisation uses: these passes are large
        # and gradient-free, where bfloat16 elementwise kernels pay and a weight copy per chunk does not
        # (Vinson Massif trace: autocast 30 s, computing_in 35 s, float32 40 s)
        return torch.autocast(self.ids.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16")

    def _forward(self, ids: torch.Tensor, t0: int, cache=None) -> torch.Tensor:
        B, S = ids.shape
        pos = torch.arange(t0, t0 + S, device=ids.device).expand(B, S)
        mask = torch.ones((B, t0 + S), dtype=torch.long, device=ids.device)
        return self.lm.run(ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=cache is not None)[0]

    def _score(self, hidden: torch.Tensor, t0: int = 0) -> torch.Tensor:
        """(batch,) probability of the whole target, teacher-forced, from final hidden states."""
        cols = [c - t0 for c in self.prompt.target_positions]
        logp = torch.log_softmax(self.lm.logits(hidden[:, cols]).float(), dim=-1)
        return logp.gather(2, self.targets.expand(hidden.shape[0], -1)[..., None])[..., 0].sum(1).exp()

    def _cache(self, t0: int, copies: int):
        if t0 == 0 or self.kv is None:
            return None
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.model.config)
        for i, (k, v) in enumerate(self.kv):
            cache.update(k[:, :, :t0].repeat(copies, 1, 1, 1), v[:, :, :t0].repeat(copies, 1, 1, 1), i)
        return cache

    def _run_chunk(self, chunk: Sequence[Restore], start: int, t0: int) -> list[float]:
        """Restorations that all start at layer ``start`` and touch no token before ``t0``."""
        n, T = self.config.samples, len(self.prompt.ids)
        S, B = T - t0, len(chunk) * n
        dev = self.ids.device
        with torch.no_grad(), self._autocast(), Hooks(self.lm.model) as hooks:
            if start == 0:
                noise = self.noise[:, t0:].repeat(len(chunk), 1, 1)
                hooks.edit_output(self.lm.layout.embed, lambda e: e + noise.to(e.dtype))
            else:
                for i in range(start):
                    hooks.skip(self.lm.layout.blocks[i], like=self.like)
                h_in = self.corrupted_hidden[start - 1][:, t0:].repeat(len(chunk), 1, 1)
                hooks.replace_input(self.lm.layout.blocks[start], h_in)
            by_module: dict[tuple[str, int], torch.Tensor] = {}
            for c, r in enumerate(chunk):
                for layer in r.layers:
                    m = by_module.setdefault((r.kind, layer), torch.zeros((len(chunk), S), dtype=torch.bool, device=dev))
                    m[c, [t - t0 for t in r.tokens]] = True
            for (kind, layer), m in by_module.items():
                mask = m.repeat_interleave(n, 0)[..., None]
                clean = self.clean[kind][layer][t0:]
                hooks.edit_output(self.modules[kind][layer], _restorer(mask, clean))
            hidden = self._forward(self.ids[t0:].expand(B, S), t0, self._cache(t0, len(chunk)))
            return self._score(hidden, t0).view(len(chunk), n).mean(1).tolist()

    # ---- the public part

    def probs(self, restorations: Sequence[Restore], progress: Callable[[int, int], None] | None = None) -> list[float]:
        """The answer's probability (mean over the noisy samples) under each restoration."""
        L = self.lm.layout.n_layers
        first_noisy = self.prompt.subject_span[0]
        out: list[float | None] = [None] * len(restorations)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(restorations):
            if r.kind not in KINDS:
                raise RequestError("kind", f"{r.kind!r} is not one of {', '.join(KINDS)}")
            if any(not 0 <= layer < L for layer in r.layers) or any(not 0 <= t < self.prompt.n_prompt for t in r.tokens):
                raise RequestError("restore", f"{r} names a layer outside 0..{L - 1} or a token outside the prompt")
            if r.tokens and r.layers and max(r.tokens) < first_noisy:
                out[i] = self.corrupted_prob  # clean and corrupted states agree before the subject
            else:
                groups.setdefault(min(r.layers, default=0), []).append(i)
        plan = []
        for start, idx in sorted(groups.items()):
            idx.sort(key=lambda i: self._first_token(restorations[i]))
            plan += [(start, chunk) for chunk in self._chunks(idx, restorations)]
        done = 0
        for start, chunk in plan:
            t0 = self._first_token(restorations[chunk[0]])
            for i, p in zip(chunk, self._run_chunk([restorations[i] for i in chunk], start, t0)):
                out[i] = p
            done += len(chunk)
            if progress:
                progress(done, len(restorations))
        return out  # type: ignore[return-value]

    def _first_token(self, r: Restore) -> int:
        return min(r.tokens, default=0) if self.can_cut else 0

    def _chunks(self, idx: list[int], restorations: Sequence[Restore]) -> list[list[int]]:
        """Split restorations sorted by first token into consecutive chunks, minimising the tokens
        computed (each chunk runs from its first restored token) plus a per-pass overhead, within the
        batch cap. Dynamic programming over the split points."""
        n, T = self.config.samples, len(self.prompt.ids)
        overhead = self.overhead * n  # per forward pass, in token-equivalents
        t0 = [self._first_token(restorations[i]) for i in idx]
        best = [0.0] + [float("inf")] * len(idx)
        cut = [0] * (len(idx) + 1)
        for j in range(1, len(idx) + 1):
            for i in range(j - 1, -1, -1):
                tokens = (j - i) * n * (T - t0[i])
                if tokens > self.config.max_batch_tokens and j - i > 1:
                    break
                cost = best[i] + tokens + overhead
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        chunks, j = [], len(idx)
        while j > 0:
            chunks.append(idx[cut[j] : j])
            j = cut[j]
        return chunks[::-1]


def _restorer(mask: torch.Tensor, clean: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda out: torch.where(mask, clean.to(out.dtype), out)
