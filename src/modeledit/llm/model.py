"""Load causal language models (packaged GGUF, local path, hub name) as a ``LanguageModel``: the model,
its tokenizer and its layout (``layout.py``); packaged models come from ``packaged.py``."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from modeledit.errors import ModelNotFoundError, RequestError
from modeledit.llm.cache import cache_dir, made_dir
from modeledit.llm.devices import dtype_name, input_device, parse_device_map, parse_dtype, stored

from modeledit.llm.layout import find_layout
from modeledit.llm.packaged import DEFAULT_MODEL, PACKAGED, convert_gguf, packaged_model_dir

log = logging.getLogger(__name__)
FEW_ROWS = 16  # logits of fewer rows than this are computed as W @ hᵀ on a CPU (see LanguageModel.logits)

# --------------------------------------------------------------------------------------------------
# the loaded model


def default_device() -> torch.device:
    acc = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    return torch.device(acc) if acc is not None else torch.device("cpu")


class LanguageModel:
    """A causal LM, its tokenizer and its layout, with the few conveniences editing needs."""

    def __init__(self, model: nn.Module, tokenizer, name: str, load_args: dict | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        # how load_model made it (name, device, dtype, device_map): what a worker process needs to load the
        # same model (``scale``); None for a model built in memory
        self.load_args = load_args
        self.offload_dir = None  # the temporary folder of weights a device map offloaded to disk, if any
        self.layout = find_layout(model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # caches (statistics, context prefixes) are keyed by the weights as loaded, so that edits
        # applied later (sequential editing) reuse them, as the reference implementations do
        self.identity = self.digest()
        self.memo: dict[str, object] = {}  # per-model in-memory cache (context templates, ...)
        self.context = None  # an applied in-context edit (context_edit.py): read before every prompt
        self.codebooks: list = []  # applied codebook edits (codebook.py), in the order their hooks run
        # transformers 5 renamed past_key_values to cache (the old name warns): use whichever this one takes
        self._cache_arg = "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        """Where token ids go in (the input embedding's device). A model spread over devices by a device map
        computes each layer on its own device: ask ``devices.module_device`` for a layer's."""
        return input_device(self.model)

    @property
    def config(self):
        c = self.model.config
        return c.get_text_config() if hasattr(c, "get_text_config") else c

    def digest(self) -> str:
        """A cheap identity of the current weights (name, config, and a strided sample of every
        parameter), used to key caches. Any real change of a checkpoint changes it."""
        h = hashlib.sha256(json.dumps(self.model.config.to_dict(), sort_keys=True, default=str).encode())
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                flat = stored(self.model, name).detach().reshape(-1)  # an offloaded weight: its kept copy
                step = max(1, flat.numel() // 257)
                sample = flat[::step][:257].to("cpu", torch.float64)
                h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
                h.update(sample.numpy().tobytes())
        return h.hexdigest()[:24]

    def state(self) -> tuple:
        """What the model computes now, for in-memory caches: the parameters' version counters (applying
        or reverting a weight edit moves them) and the codebook edits applied."""
        return tuple(p._version for p in self.model.parameters()), tuple(c.token for c in self.codebooks)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from final hidden states (already through the final norm)."""
        head = self.model.get_output_embeddings()
        rows = hidden.reshape(-1, hidden.shape[-1])
        if (hidden.device.type == "cpu" and len(rows) < FEW_ROWS and isinstance(head, torch.nn.Linear) and head.bias is None
                and not (torch.is_grad_enabled() and hidden.requires_grad)):
            # torch's CPU GEMM takes a slow path for a few rows against the vocabulary (3 rows of SmolLM2: 34 ms;
            # the same product as W @ hᵀ: 4 ms; one row is padded to two: 10 → 3.5 ms). Not where a gradient
            # flows: an optimisation gives each request what it gets alone only if every batch multiplies alike
            x = torch.cat([rows, rows.new_zeros(1, rows.shape[1])]) if len(rows) == 1 else rows
            logits = (head.weight @ x.T.to(head.weight.dtype)).T[: len(rows)].reshape(*hidden.shape[:-1], -1)
        else:
            logits = head(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def run(self, input_ids: torch.Tensor, *, cache=None, use_cache: bool = False, **kwargs):
        """The base model (blocks and final norm, no output layer) on a batch, passing and returning the
        key/value cache under the name this transformers version uses: (final hidden states, cache)."""
        out = self.model.base_model(input_ids=input_ids, use_cache=use_cache, **{self._cache_arg: cache}, **kwargs)
        return out.last_hidden_state, (getattr(out, self._cache_arg, None) if use_cache else None)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(t)["input_ids"] for t in texts]

    def generate(
        self,
        prompts: str | Sequence[str],
        max_new_tokens: int = 20,
        *,
        do_sample: bool = False,
        top_k: int = 5,
        seed: int = 0,
        prefix: str = "",
        stop: Sequence[str] = (),
    ) -> str | list[str]:
        """Continue each prompt; returns only the new text. Sampling (top-k) is seeded and leaves the
        global random state as it was. ``prefix``: text read before every prompt (few-shot examples);
        an applied in-context edit's context comes before it, chosen by the prompt alone. ``stop``:
        strings that end a continuation (it is cut before the first). See ``generate.py``."""
        from modeledit.llm.generate import generate

        return generate(self, prompts, max_new_tokens, do_sample=do_sample, top_k=top_k, seed=seed, prefix=prefix, stop=stop)

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}, {type(self.model).__name__}, {self.layout.n_layers} layers)"


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the model hub cannot be reached (None when it answers, or when huggingface_hub is told to stay
    offline: it then reads its cache alone). Asked once, without retries, before a hub name is loaded:
    huggingface_hub retries an unreachable hub five times with back-off, ~50 s per missing name."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)  # any answer, whatever its status, is an answer
    except Exception as exc:  # noqa: BLE001 - the transport's errors (DNS, refused, timeout, proxy) all mean "not reachable"
        return f"{constants.ENDPOINT}: {type(exc).__name__}: {exc}"
    return None


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = torch.float32,
    device_map: str | dict | None = None,
) -> LanguageModel:
    """Load a causal LM by packaged short name (``smollm2-135m``, ``gemma3-270m``), local path
    (a model directory or a ``.gguf`` file), or hub name. ``dtype``: float32 (default), bfloat16 or
    float16. ``device_map``: spread the model over devices with accelerate — "auto", "balanced", or a
    dict (or its JSON text) of module name → device (a GPU index, "cpu", or "disk": offloaded, read in for
    each pass); then ``device`` is not given. Layers an edit changes must be held on a device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("model name is empty: give a packaged name (" + ", ".join(PACKAGED) + "), a path or a hub name")
    dtype = parse_dtype(dtype)
    device_map = parse_device_map(device_map)
    if device_map is not None and device is not None:
        raise RequestError("device", "give either a device or a device map, not both")
    load_args = {"name": name, "device": None if device is None else str(device), "dtype": dtype_name(dtype), "device_map": device_map}
    device = torch.device(device) if device is not None else default_device()
    path = Path(name).expanduser()
    if name in PACKAGED:
        source = packaged_model_dir(name)
    elif path.is_file() and path.suffix == ".gguf":
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        source = cache_dir() / "models" / f"{path.stem}-{key}"
        if not (source / "config.json").exists():
            convert_gguf(path, source, source=str(path))
    elif path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} exists but holds no config.json: point to a saved model directory or a .gguf file")
        source = path
    else:
        source = name  # a hub name
    hub_down = None if isinstance(source, Path) else hub_unreachable()
    offline = {"local_files_only": True} if hub_down else {}  # the hub's cache only: no request retried for ~50 s
    offload = None
    placement = {}
    if device_map is not None:
        offload = tempfile.TemporaryDirectory(prefix="offload-", dir=made_dir(cache_dir()))
        placement = {"device_map": device_map, "offload_folder": offload.name}
    try:
        tok = AutoTokenizer.from_pretrained(str(source), **offline)
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, **placement, **offline)
    except (OSError, ValueError) as exc:
        if isinstance(source, Path):
            raise ModelNotFoundError(f"could not load the model in {source}: {exc}") from exc
        raise ModelNotFoundError(
            f"unknown model '{name}': not a packaged model ({', '.join(PACKAGED)}), not a local path, "
            + (f"and not in the hub's cache (the hub cannot be reached from here: {hub_down})" if hub_down else
               f"and the hub could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        ) from exc
    if device_map is None:
        model.to(device)
    lm = LanguageModel(model, tok, name, load_args)
    lm.offload_dir = offload  # removed with the model
    return lm
