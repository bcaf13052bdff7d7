"""Diffusion family on tiny random diffusers components (built from configs, no download): the DDPM
arithmetic against its closed form, RePaint (kept pixels exact, any size, batches, the paper's schedule,
seeds), Imagic on a pixel model and on a Stable-Diffusion-style latent model (reproducible, weights
untouched, a patch), requests and bad input, the training loop's resume, the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from modeledit.cli import app
from modeledit.diffusion.imagic import Imagic, ImagicEdit
from modeledit.diffusion.model import DiffusionModel, from_components, load_diffusion
from modeledit.diffusion.repaint import RePaint, jump_schedule, unet_calls, RePaintHyperParams
from modeledit.diffusion.request import ImagicRequest, InpaintRequest
from modeledit.diffusion.schedule import Respaced, alphas_cumprod
from modeledit.errors import ModelEditError, RequestError, UnsupportedModelError

from conftest import same_state, state_bytes

SCHEDULE = {"num_train_timesteps": 100, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.2}


@pytest.fixture(scope="module")
def pixel() -> DiffusionModel:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    return from_components(unet, DDPMScheduler(**SCHEDULE), name="tiny-pixel")


@pytest.fixture(scope="module")
def latent() -> DiffusionModel:
    """A Stable-Diffusion-style pipeline's parts: text-conditioned UNet on VAE latents, CLIP text encoder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from modeledit.sentences import minilm_path

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                                norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.model_max_length = 8
    text = CLIPTextModel(CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=8, projection_dim=16))
    return from_components(unet, DDPMScheduler(**{**SCHEDULE, "beta_schedule": "scaled_linear"}), text.eval(), tok, vae, name="tiny-sd")


def _image(h=16, w=16, c=1, seed=0):
    return torch.rand((c, h, w), generator=torch.Generator().manual_seed(seed))


def _lower_half(h=16, w=16):
    keep = torch.ones((1, h, w), dtype=torch.bool)
    keep[:, h // 2 :] = False
    return keep


# ---- the arithmetic

def test_reverse_step_is_the_ddpm_posterior_and_forward_step_the_forward_process():
    sched = Respaced(SCHEDULE, 100)
    ac = alphas_cumprod(SCHEDULE)
    x, x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    i = 40
    eps = (x - ac[i].sqrt() * x0) / (1 - ac[i]).sqrt()  # the noise that makes x0 the prediction
    beta = 1 - ac[i] / ac[i - 1]
    mean = ac[i - 1].sqrt() * beta / (1 - ac[i]) * x0 + (1 - beta).sqrt() * (1 - ac[i - 1]) / (1 - ac[i]) * x
    var = (1 - ac[i - 1]) / (1 - ac[i]) * beta
    z = torch.randn_like(x)
    assert torch.allclose(sched.reverse(x, eps, i, z, eta=1.0), mean + var.sqrt() * z, atol=1e-10)
    assert torch.allclose(sched.forward(x, i, z), (1 - beta).sqrt() * x + beta.sqrt() * z, atol=1e-12)
    assert torch.equal(sched.noised(x0, -1, z), x0)  # x_0 is the image itself


def test_jump_schedule_is_the_papers():
    assert unet_calls(RePaintHyperParams()) == 2410  # T = 250, jump length 10, 10 samples: the paper's count
    assert unet_calls(RePaintHyperParams(jump_n_sample=1)) == 250
    ts = jump_schedule(20, 5, 2)
    assert ts[0] == 19 and ts[-1] == -1 and all(abs(a - b) == 1 for a, b in zip(ts, ts[1:]))
    assert sum(b > a for a, b in zip(ts, ts[1:])) == 3 * 5  # one jump back up at 0, 5 and 10, not at 15


# ---- RePaint

def test_repaint_keeps_known_pixels_exactly_at_any_size_in_a_batch(pixel):
    calls = []
    images = torch.stack([_image(10, 14, seed=s) for s in range(3)])  # 10×14: not a multiple of the UNet's 2
    keep = _lower_half(10, 14)
    method = RePaint(steps=10, jump_length=2, jump_n_sample=2)
    out = method.edit(pixel, InpaintRequest(images, keep), lambda d, t: calls.append((d, t)), torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    # pixels in [0, 1] (RePaint clamps its output), and the filled region not pinned to the clamp's ends
    assert torch.equal(out, out.clamp(0, 1))
    filled = out[~keep.expand_as(images)]
    assert float(((filled == 0) | (filled == 1)).float().mean()) < 0.5
    k = keep.expand_as(images)
    assert torch.equal(out[k], images[k])  # kept region bit for bit
    assert not torch.allclose(out[~k], images[~k], atol=0.05)  # the filled region is the model's, not a copy
    assert calls[-1] == (unet_calls(method.hparams),) * 2 and len(calls) == unet_calls(method.hparams)


def test_repaint_is_reproducible_and_the_seed_matters(pixel):
    req = InpaintRequest(_image(), _lower_half())
    method = RePaint(steps=8, jump_length=2, jump_n_sample=2)
    a, b = (method.edit(pixel, req, generator=torch.Generator().manual_seed(5)) for _ in range(2))
    c = method.edit(pixel, req, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_repaint_takes_masks_of_either_convention_from_files(pixel, tmp_path):
    from modeledit.diffusion.io import read_mask, save_image

    keep = _lower_half()
    save_image(keep.float(), tmp_path / "keep_white.png")
    save_image((~keep).float(), tmp_path / "fill_white.png")
    assert torch.equal(read_mask(tmp_path / "keep_white.png"), keep)
    assert torch.equal(read_mask(tmp_path / "fill_white.png", white_fills=True), keep)


@pytest.mark.parametrize("images,keep,field", [
    (_image(16, 16), _lower_half(12, 16), "mask"),  # sizes differ
    (_image(), torch.ones((1, 16, 16), dtype=torch.bool), "mask"),  # nothing to fill
    (_image(), torch.zeros((1, 16, 16), dtype=torch.bool), "mask"),  # nothing kept
    (_image() * 255, _lower_half(), "image"),  # 8-bit values
    (torch.stack([_image(), _image()]), torch.stack([_lower_half()] * 3), "mask"),  # 3 masks for 2 images
])
def test_inpaint_requests_refuse_bad_input(images, keep, field):
    with pytest.raises(RequestError) as e:
        InpaintRequest(images, keep)
    assert e.value.field == field


def test_repaint_refuses_a_prompt_for_an_unconditional_model_and_a_latent_model(pixel, latent):
    with pytest.raises(RequestError, match="not text-conditioned"):
        RePaint(steps=2).edit(pixel, InpaintRequest(_image(), _lower_half(), prompt="a dress"))
    with pytest.raises(UnsupportedModelError, match="latents"):
        RePaint(steps=2).edit(latent, InpaintRequest(_image(32, 32, 3), _lower_half(32, 32)))


# ---- Imagic

def _imagic(model, image, seed=0, **kw):
    hp = dict(embed_steps=3, tune_steps=3, tune_lr=1e-3, sample_steps=4) | kw
    return Imagic(**hp).edit(model, ImagicRequest(image, "a red coat"), seed=seed)


def test_imagic_on_a_latent_pipeline_is_reproducible_and_leaves_the_model_as_it_was(latent):
    before, grads = state_bytes(latent.unet), [p.requires_grad for p in latent.unet.parameters()]
    image = _image(32, 32, 3)
    e1, e2, e3 = _imagic(latent, image), _imagic(latent, image), _imagic(latent, image, seed=1)
    assert same_state(latent.unet, before) and not latent.unet.training
    assert [p.requires_grad for p in latent.unet.parameters()] == grads
    assert torch.equal(e1.e_opt, e2.e_opt) and not torch.equal(e1.e_opt, e3.e_opt)
    assert not torch.equal(e1.e_opt, e1.e_target)  # stage A moved the embedding
    imgs1, imgs2 = e1.generate(latent, [0.0, 1.0], seed=3), e2.generate(latent, [0.0, 1.0], seed=3)
    assert imgs1.shape == (2, 3, 32, 32) and torch.equal(imgs1, imgs2) and not torch.equal(imgs1[0], imgs1[1])
    assert same_state(latent.unet, before)  # generating applied the fine-tuning and reverted it
    # one sweep is one batch from one starting noise: each α's image is the one a run of that α alone gives
    alone = e1.generate(latent, 1.0, seed=3)
    assert torch.allclose(alone[0], imgs1[1], atol=1e-4)
    assert not torch.allclose(e1.generate(latent, 1.0, seed=4)[0], imgs1[1], atol=1e-2)  # another seed, another noise
    with e1.patch.applied(latent.unet):
        assert not same_state(latent.unet, before)


def test_imagic_edit_saves_and_loads(latent, tmp_path):
    e = _imagic(latent, _image(32, 32, 3))
    e.save(tmp_path / "edit")
    back = ImagicEdit.load(tmp_path / "edit")
    assert torch.equal(back.e_opt, e.e_opt.float()) and back.hparams == e.hparams
    assert torch.equal(back.generate(latent, 0.5, seed=1), e.generate(latent, 0.5, seed=1))


def test_imagic_refuses_bad_input(pixel, latent):
    with pytest.raises(RequestError, match="alpha"):
        Imagic(alpha=5.0)
    with pytest.raises(RequestError, match="prompt"):
        ImagicRequest(_image(32, 32, 3), "  ")
    with pytest.raises(RequestError, match="text-conditioned"):
        Imagic().edit(pixel, ImagicRequest(_image(), "a coat"))
    with pytest.raises(RequestError, match="multiples"):
        Imagic().edit(latent, ImagicRequest(_image(34, 34, 3), "a coat"))
    with pytest.raises(RequestError, match="alpha"):
        _imagic(latent, _image(32, 32, 3)).generate(latent, [0.5, 3.0])


# ---- loading

def test_loading_something_that_is_not_a_diffusion_model_says_so(tmp_path):
    (tmp_path / "note.txt").write_text("hello")
    with pytest.raises(UnsupportedModelError, match="not a diffusion model"):
        load_diffusion(tmp_path / "note.txt")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"_class_name": "BertModel"}))
    with pytest.raises(UnsupportedModelError, match="not a diffusers UNet2DModel"):
        load_diffusion(tmp_path / "bert")
    with pytest.raises(ModelEditError):
        load_diffusion(tmp_path / "missing-model-dir")


def test_a_saved_pixel_unet_loads_and_inpaints_from_the_cli(pixel, tmp_path):
    from diffusers import DDPMScheduler

    pixel.unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(**SCHEDULE).save_pretrained(tmp_path / "unet")
    from modeledit.diffusion.io import save_image

    save_image(_image(12, 12), tmp_path / "in.png")
    save_image(_lower_half(12, 12).float(), tmp_path / "mask.png")
    r = CliRunner().invoke(app, ["inpaint", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                                 "--model", str(tmp_path / "unet"), "--steps", "6", "--jump-length", "2", "--jump-n-sample", "2",
                                 "--out", str(tmp_path / "out.png")])
    assert r.exit_code == 0, r.output
    a = np.asarray(Image.open(tmp_path / "in.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "out.png"), dtype=np.int16)
    assert b.shape == (12, 12) and np.abs(a - b)[:6].max() == 0  # the kept upper half, exact after the PNG round trip


def test_cli_errors_write_nothing(pixel, tmp_path):
    from modeledit.diffusion.io import save_image

    pixel.unet.save_pretrained(tmp_path / "unet")
    save_image(_image(12, 12), tmp_path / "in.png")
    save_image(_lower_half(16, 16).float(), tmp_path / "mask.png")
    (tmp_path / "not-an-image.png").write_text("text")
    for image, mask in (("in.png", "mask.png"), ("not-an-image.png", "mask.png")):
        r = CliRunner().invoke(app, ["inpaint", "--image", str(tmp_path / image), "--mask", str(tmp_path / mask),
                                     "--model", str(tmp_path / "unet"), "--out", str(tmp_path / "out.png")])
        assert r.exit_code == 2 and "error" in r.output
        assert not (tmp_path / "out.png").exists()


# ---- the embedded model's training loop

def test_training_resumes_to_the_same_weights(tmp_path):
    from modeledit.diffusion.text import TextEncoder
    from modeledit.diffusion.tiny import TinyConfig, TrainTinyConfig, train

    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand((32, 1, 8, 8), generator=g), torch.randint(0, 10, (32,), generator=g)
    text = TextEncoder()
    cfg = TrainTinyConfig(steps=4, batch_size=4, warmup=1, model=TinyConfig(image_size=8, channels=(8, 16), attention_head_dim=2))
    whole, _ = train(images, labels, text, cfg)

    def crash_at_step_3(done, total):
        if done == 3:  # the checkpoint of step 2 is written; die after step 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(images, labels, text, cfg, checkpoint=tmp_path / "ck", every=2, progress=crash_at_step_3)
    resumed, info = train(images, labels, text, cfg, checkpoint=tmp_path / "ck", every=2)
    assert same_state(resumed, state_bytes(whole))
    assert [h["step"] for h in info["training"]["history"]] == [4]


# ---- the embedded model and its judge

@pytest.fixture(scope="module")
def embedded():
    return load_diffusion()


@pytest.fixture(scope="module")
def judge():
    import modeledit as me

    return me.load_judge()


def test_the_judge_knows_fashion_mnist(judge):
    from modeledit.errors import DataError
    from modeledit.images import load_fashion_mnist

    try:
        test = load_fashion_mnist().test
    except DataError as exc:
        pytest.skip(str(exc))
    assert judge.error(test.images, test.labels) < 0.1


def test_the_embedded_model_draws_what_the_caption_says(embedded, judge):
    from modeledit.diffusion.sample import sample
    from modeledit.diffusion.tiny import default_prompt

    prompts = [default_prompt(c) for c in embedded.classes for _ in range(2)]
    images = sample(embedded, embedded.encode_text(prompts), steps=25, generator=torch.Generator().manual_seed(0))
    assert images.shape == (20, 1, 28, 28)
    pred = judge.predict(images)
    assert float((pred == torch.arange(10).repeat_interleave(2)).float().mean()) >= 0.8
    other = sample(embedded, embedded.encode_text(["a pair of trousers"] * 4), steps=25, generator=torch.Generator().manual_seed(0))
    assert (judge.predict(other) == 1).all()  # another phrasing than the captions' first


def test_cli_samples_inpaints_and_edits_with_the_embedded_model(tmp_path):
    from modeledit.diffusion.io import save_image

    r = CliRunner().invoke(app, ["diffusion", "sample", "--prompt", "a pair of sneakers", "--n", "4", "--steps", "10",
                                 "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "s.png").size[0] > 200
    save_image(_image(28, 28), tmp_path / "in.png")
    save_image(_lower_half(28, 28).float(), tmp_path / "mask.png")
    r = CliRunner().invoke(app, ["inpaint", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                                 "--steps", "10", "--jump-n-sample", "1", "--out", str(tmp_path / "out.png")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["imagic", "--image", str(tmp_path / "in.png"), "--prompt", "a coat", "--embed-steps", "2",
                                 "--tune-steps", "2", "--sweep", "0", "--sweep", "1", "--out", str(tmp_path / "im")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "im" / "imagic.json").read_text())
    # the model's recommended rate and α (not the paper's 1e-6 and 0.9); the chosen α joins the sweep
    assert s["hparams"]["tune_lr"] == 1e-4 and s["alpha"] == 1.2 and s["alphas"] == [0.0, 1.0, 1.2]
    assert (tmp_path / "im" / "sheet.png").exists() and (tmp_path / "im" / "result.png").exists()
    r = CliRunner().invoke(app, ["imagic", "--image", str(tmp_path / "in.png"), "--prompt", "a coat", "--alpha", "7",
                                 "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "alpha" in r.output and not (tmp_path / "bad").exists()
