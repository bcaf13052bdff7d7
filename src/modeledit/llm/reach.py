"""How far a ROME update reaches other subjects, and which subjects of a pool it reaches most.

ROME writes ΔW = (v* − W k*) uᵀ / (uᵀk*) with u = C⁻¹k*: any other key k gets the same change of value
scaled by its *reach* uᵀk / uᵀk* (1 at k* itself). The value optimisation only sees the edited subject,
so a long δ — which the optimisation favours where the MLP's output is normalised again, as in Gemma-3 —
moves every subject whose key the update reaches. The guard (``ROMEHyperParams.guard_subjects``) lets it
see them: the subjects of a pool (the embedded corpus's article titles: people, places, works) that the
update reaches most are put into the request's own prompt followed by its new target, get δ times the
reach of each of their tokens' keys — the rank-one update's exact effect there, up to ``v₀ − W k*`` —
and are held by a KL term on their next-token distribution and a penalty on any rise of their
log-probability of the new target (``value.py``).
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from modeledit.llm.corpus import embedded_titles
from modeledit.llm.hooks import Hooks
from modeledit.llm.model import LanguageModel
from modeledit.llm.tokens import pad_right


def directions(C: torch.Tensor | None, k_star: torch.Tensor, k_prompt: torch.Tensor | None = None) -> torch.Tensor:
    """(n, d) float64: for each key k* (rows of ``k_star``, or one (d,)), the direction u of the rank-one
    update, scaled so that uᵀk* = 1 — the reach of any key k is then uᵀk. The paper's: u ∝ C⁻¹k* (C None:
    k*). With ``k_prompt`` (ROME's ``prompt_key``, one per k*): the least u in C with uᵀk* = uᵀk_prompt = 1,
    so that the prompt's own key is reached whole too; the paper's where the two keys are parallel (their
    cosine in C⁻¹ within 1e-6 of 1: one constraint). One solve for all."""
    d = k_star.shape[-1]
    ks = k_star.to(torch.float64).reshape(-1, d)
    Cd = None if C is None else C.to(ks.device, torch.float64)
    solve = (lambda K: K) if Cd is None else (lambda K: torch.linalg.solve(Cd, K.T).T)  # noqa: E731
    S = solve(ks)
    g11 = (S * ks).sum(1, keepdim=True)
    U = S / g11
    if k_prompt is not None:
        kp = k_prompt.to(ks.device, torch.float64).reshape(-1, d)
        P = solve(kp)
        g12, g22 = (S * kp).sum(1, keepdim=True), (P * kp).sum(1, keepdim=True)
        det = g11 * g22 - g12**2
        apart = (g12**2 / (g11 * g22) < 1 - 1e-6)[:, 0]
        two = ((g22 - g12) * S + (g11 - g12) * P) / det  # G⁻¹(1, 1) in the basis C⁻¹k*, C⁻¹k_prompt
        U = torch.where(apart[:, None], two, U)
    return U


def reach(C: torch.Tensor | None, k_star: torch.Tensor, keys: torch.Tensor, owner: torch.Tensor | None = None,
          k_prompt: torch.Tensor | None = None) -> torch.Tensor:
    """uᵀk / uᵀk* (``directions``' u) for each row k of ``keys`` (m, d): against one key ``k_star`` (d,), or
    against ``k_star[owner[i]]`` for row i when ``k_star`` is (n, d). Float32, on ``keys``' device."""
    U = directions(C, k_star, k_prompt)
    own = torch.zeros(len(keys), dtype=torch.long, device=U.device) if owner is None else owner.to(U.device)
    return (keys.to(U.device, torch.float64) * U[own]).sum(1).to(keys.device, torch.float32)


@torch.no_grad()
def subject_keys(lm: LanguageModel, layer: int, subjects: Sequence[str], chunk: int = 256) -> torch.Tensor:
    """(len(subjects), intermediate) the input of ``layer``'s MLP output projection at each bare subject's
    last token (the key ROME writes at, without a prompt around it), float32."""
    proj = lm.layout.mlp_out[layer]
    out = []
    for b in range(0, len(subjects), chunk):
        seqs = [lm.tokenizer(s)["input_ids"] for s in subjects[b : b + chunk]]
        ids, mask = pad_right(seqs, lm.tokenizer.pad_token_id, lm.device)
        with Hooks(lm.model) as hooks:
            rec = hooks.record(proj, inputs=True, outputs=False)
            hooks.stop_after(proj)
            lm.run(ids, attention_mask=mask)
        last = (mask.sum(1) - 1).to(rec.input.device)
        out.append(rec.input[torch.arange(len(seqs), device=last.device), last].float().cpu())
    return torch.cat(out)


def pool(lm: LanguageModel, layer: int, size: int) -> tuple[list[str], torch.Tensor]:
    """``size`` subjects (article titles of the embedded corpus, without a parenthesised qualifier) and
    their keys at ``layer``, kept in the model's memo while its weights stay as they are."""
    key = f"reach-pool-{layer}-{size}"
    hit = lm.memo.get(key)
    if hit is not None and hit[0] == lm.state():
        return hit[1], hit[2]
    titles = list(dict.fromkeys(re.sub(r"\s*\(.*\)$", "", t).strip() for t in embedded_titles(size)))
    titles = [t for t in titles if t and "{" not in t and "}" not in t]
    keys = subject_keys(lm, layer, titles)
    lm.memo[key] = (lm.state(), titles, keys)
    return titles, keys


@torch.no_grad()
def mlp_output_renormalised(lm: LanguageModel, layer: int) -> bool:
    """Whether the block normalises its MLP's output again before adding it to the residual (Gemma-2/3's
    ``post_feedforward_layernorm``), found by doubling the MLP's output on a short text: where the block's
    output does not move, the value's length cannot be seen and only its direction counts. Kept in the memo."""
    key = f"mlp-renormalised-{layer}"
    if key not in lm.memo:
        ids = torch.tensor([lm.tokenizer("The city of Paris")["input_ids"]], device=lm.device)
        outs = []
        for scale in (1.0, 2.0):
            with Hooks(lm.model) as hooks:
                if scale != 1.0:
                    hooks.edit_output(lm.layout.mlp[layer], lambda o, s=scale: o * s)
                mlp = hooks.record(lm.layout.mlp[layer], outputs=True)
                block = hooks.record(lm.layout.blocks[layer], outputs=True)
                hooks.stop_after(lm.layout.blocks[layer])
                lm.run(ids)
            outs.append((mlp.output.float(), block.output.float()))
        # doubling adds the MLP's output once more: does the block's output move by it? (past the first
        # token, where attention sinks carry huge activations; the rest is float32 rounding of a large residual)
        moved = (outs[1][1] - outs[0][1])[:, 1:].norm() / outs[0][0][:, 1:].norm()
        lm.memo[key] = bool(moved < 0.5)  # 1 where it is added as it is; ≤ 0.22 on every Gemma-3 layer (rounding)
    return lm.memo[key]


def guard_count(lm: LanguageModel, layer: int, asked: int | None) -> int:
    """The number of guard subjects: as asked, or (None) 8 where the MLP's output is normalised again
    (there ROME's value runs to its clamp and spills: see the README's "Gemma-3"), else 0 — the paper's ROME."""
    if asked is not None:
        return asked
    return 8 if mlp_output_renormalised(lm, layer) else 0


def most_reached(lm: LanguageModel, layer: int, C: torch.Tensor | None, subjects: Sequence[str], n: int, size: int = 2000) -> list[list[str]]:
    """For each subject, the ``n`` subjects of the pool that an update written at its key reaches most
    (other than the subject itself, or one containing it or contained in it); one pass and one solve for all."""
    titles, keys = pool(lm, layer, size)
    U = directions(C, subject_keys(lm, layer, subjects))  # (m, d)
    r = (U @ keys.to(U.device, torch.float64).T).float()  # (m, pool): each subject's reach of each title
    out = []
    for subject, row in zip(subjects, r):
        s, picked = subject.casefold(), []
        for i in torch.argsort(row, descending=True).tolist():
            t = titles[i].casefold()
            if t in s or s in t:
                continue
            picked.append(titles[i])
            if len(picked) == n:
                break
        out.append(picked)
    return out
