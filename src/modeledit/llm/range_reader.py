"""Reading MEMIT's keys and residuals over a layer range, on the model as it is at each call, cheaply."""

from __future__ import annotations

from typing import Sequence

import torch

from modeledit.llm.hooks import Hooks
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request
from modeledit.llm.rows import build_rows


class RangeReader:
    """The keys (the MLP projection's input at the last subject token, averaged over the context templates)
    and the residual stream (a block's output at the last subject token of the bare prompt) of every request,
    read on the model as it is at each call, cheaply:

    - each row is cut after its last subject token (nothing later can change what is read there), unless
      read ``whole`` (every token's key: ``off_site_moment``);
    - the input of the range's first block is recorded once: updates inside the range cannot change it, so
      each later read runs only the blocks from the range's first up to the one read (stopping there)."""

    def __init__(self, lm: LanguageModel, first: int, requests: Sequence[Request], templates: Sequence[str], batch: int,
                 whole: bool = False):
        self.lm, self.first = lm, first
        blocks = lm.layout.blocks
        self.batches = []
        for b in range(0, len(requests), batch):
            rows = build_rows(lm, requests[b : b + batch], templates, ())
            width = rows.input_ids.shape[1] if whole else int(rows.site.max()) + 1
            ids, mask = rows.input_ids[:, :width], rows.attention_mask[:, :width]
            with torch.no_grad(), Hooks(lm.model) as hooks:
                rec = hooks.record(blocks[first], inputs=True, outputs=False)
                rec0 = hooks.record(blocks[0], outputs=True, keep_raw=True)
                hooks.stop_after(blocks[first])
                lm.run(ids, attention_mask=mask)
            self.batches.append((ids, mask, rec.input, rec0.raw_output, rows))

    def _run(self, b: int, read: str, outputs: bool, keep: torch.Tensor | None = None) -> torch.Tensor:
        ids, mask, h_in, like, rows = self.batches[b]
        if keep is not None:
            ids, mask, h_in = ids[keep], mask[keep], h_in[keep]
        blocks = self.lm.layout.blocks
        with torch.no_grad(), Hooks(self.lm.model) as hooks:
            for j in range(self.first):
                hooks.skip(blocks[j], like=like)
            hooks.replace_input(blocks[self.first], h_in)
            rec = hooks.record(read, inputs=not outputs, outputs=outputs)
            hooks.stop_after(read)
            self.lm.run(ids, attention_mask=mask)
        return rec.output if outputs else rec.input

    def keys(self, layer: int) -> torch.Tensor:
        """(n, inter) each request's key at ``layer``, averaged over its context templates, float64."""
        return self.key_pairs(layer)[0]

    def key_pairs(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """((n, inter), (n, inter)): each request's key at ``layer`` averaged over its context templates, and
        the key of its bare prompt (the first template's row); float64, from one read."""
        avg, own = [], []
        for b, (_, _, _, _, rows) in enumerate(self.batches):
            k = self._run(b, self.lm.layout.mlp_out[layer], outputs=False)
            k = k[torch.arange(len(rows.site)), rows.site].to(torch.float64)
            n = rows.n_requests
            sums = torch.zeros(n, k.shape[1], dtype=torch.float64, device=k.device).index_add(0, rows.row_request, k)
            avg.append(sums / torch.bincount(rows.row_request, minlength=n)[:, None])
            own.append(k[rows.first_rows.to(k.device)])
        return torch.cat(avg), torch.cat(own)

    def off_site_moment(self, layer: int) -> torch.Tensor:
        """(inter, inter) Σ k kᵀ of the keys at ``layer`` of every token of the rows but their edit sites (read
        whole: ``whole=True``), float64."""
        total = None
        for b, (_, mask, _, _, rows) in enumerate(self.batches):
            k = self._run(b, self.lm.layout.mlp_out[layer], outputs=False)  # (rows, width, inter)
            keep = mask.bool().clone()
            keep[torch.arange(len(rows.site)), rows.site] = False
            k = k[keep.to(k.device)].to(torch.float64)
            total = k.T @ k if total is None else total + k.T @ k
        return total

    def residuals(self, layer: int) -> torch.Tensor:
        """(n, hidden) the output of block ``layer`` at the last subject token of each bare prompt."""
        out = []
        for b, (_, _, _, _, rows) in enumerate(self.batches):
            first = rows.first_rows
            h = self._run(b, self.lm.layout.blocks[layer], outputs=True, keep=first)
            out.append(h[torch.arange(len(first)), rows.site[first]].float())
        return torch.cat(out)
