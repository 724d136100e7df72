"""The text-to-image stack: captions, tokenizer, text encoder, cross-attention U-Net, negative
prompts, img2img and inpainting, against what each must do exactly."""

import json

import numpy as np
import pytest
import torch

from sdlab.captions import class_captions, with_captions
from sdlab.conditioning import TextCondition
from sdlab.data import DataConfig, DataError, load_splits, make_synthetic, to_uint8
from sdlab.diffusion import NoiseSchedule
from sdlab.diffusion.guidance import drop_labels, guided
from sdlab.kernels.attention import attention_matmuls
from sdlab.pipeline import DiffusionPipeline
from sdlab.scenes import HELD_OUT, attribute_accuracy, caption, combinations, make_scenes, read_scene, render
from sdlab.text import PAD_ID, TextConditionedUNet, TextConfig, Tokenizer
from sdlab.unet import UNetConfig
from sdlab.vae import VAE, VAEConfig

from conftest import ROOT, run_script

CAPTIONS = ["a small red disc at the top left", "a large blue square in the centre", "a green cross"]
TEXT = TextConfig(text_cond=True, context_length=10, text_width=16, text_layers=1, text_heads=2)


def tiny_model(seed: int = 0, image_size: int = 16, channels: int = 3) -> tuple[TextConditionedUNet, Tokenizer]:
    """A text-conditioned U-Net whose zero-initialised output layers are randomised, so that its
    output depends on everything it reads."""
    torch.manual_seed(seed)
    tokenizer = Tokenizer.build(CAPTIONS, TEXT.context_length)
    cfg = UNetConfig(in_channels=channels, image_size=image_size, base_channels=16, channel_mults=(1, 2),
                     attention_resolutions=(8,), heads=2, context_dim=TEXT.text_width, dropout=0.0)
    model = TextConditionedUNet(cfg, TEXT, len(tokenizer.vocab)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.05)
    return model, tokenizer


def tiny_pipe(vae=None, channels=3, image_size=16) -> DiffusionPipeline:
    model, tokenizer = tiny_model(channels=channels, image_size=image_size)
    schedule = NoiseSchedule.create("linear", 50)
    config = {"latent_vae": {"vae_image_size": 16}} if vae is not None else {}
    return DiffusionPipeline(model, schedule, "eps", vae, 1.0, TextCondition(TEXT, tokenizer), config)


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_padding_truncation_and_the_empty_prompt():
    tok = Tokenizer.build(CAPTIONS, 8)
    bos, eos = tok.ids["<bos>"], tok.ids["<eos>"]
    ids = tok.encode(CAPTIONS[:2])
    assert ids.shape == (2, 8) and ids.dtype == torch.int64
    assert tok.decode(tok.encode(CAPTIONS[2])[0]) == CAPTIONS[2]
    short = tok.encode("a green cross")[0].tolist()
    assert short == [bos, tok.ids["a"], tok.ids["green"], tok.ids["cross"], eos, PAD_ID, PAD_ID, PAD_ID]
    long = tok.encode(CAPTIONS[0])[0].tolist()          # 8 words: truncated to 6, end token kept
    assert long[0] == bos and long[-1] == eos and tok.decode(torch.tensor(long)) == "a small red disc at the"
    assert tok.encode("")[0].tolist() == [bos, eos] + [PAD_ID] * 6
    assert tok.decode(tok.encode("A RED disc.")[0]) == "a red disc <unk>"    # "." was never seen
    assert tok.unknown("a purple disc") == ["purple"]
    again = Tokenizer.from_state(json.loads(json.dumps(tok.state())))
    assert torch.equal(again.encode(CAPTIONS), tok.encode(CAPTIONS))


# ---------------------------------------------------------------- the network

def test_unet_output_depends_on_the_prompt_and_not_on_padding():
    model, tok = tiny_model()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 600])
    with torch.no_grad():
        red, blue = model(x, t, tok.encode(["a red disc"] * 2)), model(x, t, tok.encode(["a blue disc"] * 2))
        assert (red - blue).abs().max() > 1e-3
        # the same prompt padded to 10 or cut to 6 tokens: the pad positions are masked everywhere
        ids = tok.encode(["a red disc", "a small blue square"])
        torch.testing.assert_close(model(x, t, ids[:, :6]), model(x, t, ids))
        # ... and whatever the pad token's embedding holds
        model.text_encoder.token.weight[PAD_ID].normal_(0, 10.0)
        torch.testing.assert_close(model(x, t, ids), model(x, t, ids[:, :6]))


def test_cross_attention_weights_sum_to_one_over_the_prompt_tokens_and_ignore_padding():
    model, tok = tiny_model()
    ids = tok.encode(["a red disc", "a large blue square in the centre"])
    layers = model.cross_attentions()
    assert len(layers) == 4                              # down and up blocks at 8x8, and the middle
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 500])
    with torch.no_grad():
        fast = model(x, t, ids)
        for layer in layers:
            layer.record = []
        recorded = model(x, t, ids)
    torch.testing.assert_close(recorded, fast)           # the recording path computes the same thing
    real = (ids != PAD_ID)[:, None, None, :]
    for layer in layers:
        (weights,) = layer.record
        assert weights.shape[-1] == ids.shape[1]
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert torch.all(weights.masked_select(~real.expand_as(weights)) == 0)


def test_masked_attention_kernels_agree():
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4)
    mask = torch.rand(3, 1, 1, 7) < 0.6
    mask[..., 0] = True
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention_matmuls(q, k, v, mask), expected)
    # the masked keys' values do not matter
    torch.testing.assert_close(attention_matmuls(q, k, v.masked_fill(~mask[:, :, 0, :, None], 9.0), mask), expected)


def test_caption_dropout_replaces_whole_prompts_by_the_empty_prompt():
    tok = Tokenizer.build(CAPTIONS, 10)
    ids = tok.encode(CAPTIONS * 400)
    empty = tok.encode("")[0]
    dropped = drop_labels(ids, 0.25, empty, torch.Generator().manual_seed(0))
    is_empty = (dropped == empty).all(1)
    kept = (dropped == ids).all(1)
    assert torch.all(is_empty | kept)
    assert is_empty.float().mean().item() == pytest.approx(0.25, abs=0.04)


# ---------------------------------------------------------------- guidance and prompts

def test_negative_prompt_guidance():
    model, tok = tiny_model()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([100, 100, 100])
    cond, neg, empty = tok.encode(["a red disc"] * 3), tok.encode(["a square"] * 3), tok.encode([""] * 3)
    with torch.no_grad():
        e_cond, e_neg, e_empty = model(x, t, cond), model(x, t, neg), model(x, t, empty)
        torch.testing.assert_close(guided(model, cond, 1.0, neg)(x, t), e_cond)                 # w = 1: conditional
        torch.testing.assert_close(guided(model, cond, 4.0, neg)(x, t), e_neg + 4 * (e_cond - e_neg))
        torch.testing.assert_close(guided(model, cond, 4.0, empty[0])(x, t), e_empty + 4 * (e_cond - e_empty))
    pipe = tiny_pipe()
    draw = lambda **kw: pipe(3, prompt="a red disc", guidance_scale=3.0, sampler="ddim", sample_steps=4,
                             generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(draw(negative_prompt=""), draw())     # the empty negative prompt is plain CFG
    assert (draw(negative_prompt="a square") - draw()).abs().max() > 1e-4
    with pytest.raises(ValueError, match="prompts, not class labels"):
        pipe(2, labels=torch.tensor([0, 1]))


# ---------------------------------------------------------------- img2img and inpainting

def test_img2img_strength_zero_returns_the_input_and_one_ignores_it():
    pipe = tiny_pipe()
    a, b = make_synthetic(2, 16, seed=3).images.float().div(127.5).sub(1).chunk(2)
    draw = lambda image, s: pipe(1, prompt="a red disc", init_image=image, strength=s, sampler="ddim",
                                 sample_steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draw(a, 0.0), a)
    torch.testing.assert_close(draw(a, 1.0), draw(b, 1.0))
    txt2img = pipe(1, prompt="a red disc", sampler="ddim", sample_steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draw(a, 1.0), txt2img)
    half = draw(a, 0.5)
    assert (half - a).abs().mean() < (draw(b, 0.5) - a).abs().mean()     # an edit stays near its input
    with pytest.raises(ValueError, match="strength"):
        draw(a, 1.5)


def test_img2img_strength_zero_is_the_vae_round_trip_for_a_latent_model():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_channels=8, channel_mults=(1, 2), latent_channels=4)).eval()
    pipe = tiny_pipe(vae=vae, channels=4, image_size=16 // vae.cfg.downsampling)
    image = make_synthetic(1, 16, seed=0).images.float().div(127.5).sub(1)
    with torch.no_grad():
        round_trip = vae.decode(vae.encode(image).mode()).clamp(-1, 1)
    torch.testing.assert_close(pipe(1, prompt="a red disc", init_image=image, strength=0.0), round_trip)


@pytest.mark.parametrize("latent", [False, True])
def test_inpainting_keeps_the_known_region(latent):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_channels=8, channel_mults=(1, 2), latent_channels=4)).eval() if latent else None
    pipe = tiny_pipe(vae=vae, channels=4 if latent else 3, image_size=16 // vae.cfg.downsampling if latent else 16)
    image = make_synthetic(2, 16, seed=5).images.float().div(127.5).sub(1)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1                                                  # repaint the centre
    out = pipe(2, prompt="a red disc", init_image=image, mask=mask, guidance_scale=2.0, sampler="dpmpp_2m",
               sample_steps=6, generator=torch.Generator().manual_seed(0))
    keep = (1 - mask).bool().expand_as(out)
    torch.testing.assert_close(out[keep], image[keep])                         # the known pixels, exactly
    assert (out - image)[~keep].abs().mean() > 0.01                            # the masked ones are generated
    if latent:   # in latent space: cells covering only known pixels end as the init latents
        z = pipe(2, prompt="a red disc", init_image=image, mask=mask, sampler="ddim", sample_steps=4,
                 generator=torch.Generator().manual_seed(0), decode=False)
        known = (1 - pipe.known_mask(mask)).bool().expand_as(z)
        torch.testing.assert_close(z[known], pipe.encode(image)[known])


# ---------------------------------------------------------------- data

def test_scenes_captions_follow_the_parameters_and_the_checker_reads_them_back():
    rng = np.random.default_rng(0)
    for held_out in (False, True):
        params = combinations(held_out)
        images = torch.from_numpy(render(params, 32, rng))
        assert attribute_accuracy(images, params) == {a: 1.0 for a in ("colour", "shape", "size", "position", "all")}
    assert len(combinations()) == 120 and len(combinations(True)) == 40
    scenes = make_scenes(300, 32, seed=0)
    again = make_scenes(300, 32, seed=0)
    assert torch.equal(scenes.images, again.images) and scenes.captions == again.captions
    for image, text in zip(scenes.images[:40], scenes.captions):
        assert caption(*read_scene(image).values()) == text
    for colour, shape in HELD_OUT:
        assert not any(f"{colour} {shape}" in c for c in scenes.captions)
    blank = torch.full((3, 32, 32), 60, dtype=torch.uint8)
    assert read_scene(blank) == dict.fromkeys(("colour", "shape", "size", "position"))


def test_captions_from_class_templates_and_from_metadata_jsonl(tmp_path):
    from PIL import Image

    labels = torch.tensor([0, 1, 1, 0])
    captions = class_captions(labels, ("sports_car", "cat"), seed=0)
    assert captions == class_captions(labels, ("sports_car", "cat"), seed=0)
    assert all(("sports car" in c) == (y == 0) and ("cat" in c) == (y == 1) for c, y in zip(captions, labels.tolist()))
    assert with_captions(make_scenes(4, 16), 0).captions == make_scenes(4, 16).captions     # own captions kept

    lines = []
    for i in range(10):
        Image.fromarray(np.full((20, 20, 3), 25 * i, np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"grey level {i}"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    splits = load_splits(DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=16, val_fraction=0.2))
    assert len(splits.train) == 8 and len(splits.test) == 2
    for split in (splits.train, splits.test):
        for image, text in zip(split.images, split.captions):
            assert text == f"grey level {int(image.float().mean().round()) // 25}"
    (tmp_path / "metadata.jsonl").write_text(lines[0] + "\n{\"file_name\": \"missing.png\", \"text\": \"x\"}\n")
    with pytest.raises(DataError, match=r"metadata.jsonl:2: no image .*missing.png"):
        load_splits(DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=16))


# ---------------------------------------------------------------- end to end

def test_tiny_text_to_image_run_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "t2i"
    trained = run_script(["train_diffusion.py", "--dataset", "scenes", "--text-cond", "--synthetic-size", "48",
                          "--imgsz", "16", "--batch", "16", "--epochs", "1", "--device", "cpu", "--hidden-dim", "8",
                          "--down-scale", "1,2", "--attention-resolutions", "8", "--text-width", "16",
                          "--text-heads", "2", "--context-length", "12", "--noise-steps", "20", "--num-samples", "4",
                          "--sample-steps", "3", "--save-dir", run, "--visualize"], cwd=ROOT / "diffusers")
    assert trained.returncode == 0, trained.stderr
    assert "text-conditioned" in trained.stdout and "horizontal flips are off" in trained.stdout
    for name in ("best.pt", "prompt_grid.png", "cross_attention.png", "img2img.png", "inpainting.png"):
        assert (run / name).stat().st_size > 0, name
    pipe = DiffusionPipeline.from_checkpoint(str(run / "best.pt"), torch.device("cpu"))
    assert pipe.tokenizer is not None and "disc" in pipe.tokenizer.vocab
    init = tmp_path / "init.png"
    from PIL import Image
    Image.fromarray(to_uint8(make_scenes(1, 16).images.float() / 127.5 - 1)[0].permute(1, 2, 0).numpy()).save(init)
    from sdlab.cli import sample                           # in this process: no torch start-up per call

    summaries = {}
    for name, extra in {"t2i": [], "img2img": ["--init-image", init, "--strength", "0.5"],
                        "inpaint": ["--init-image", init, "--mask-box", "4,4,12,12"]}.items():
        out = tmp_path / f"{name}.png"
        sample.main([str(run / "best.pt"), "--prompt", "a large red disc in the centre", "--negative-prompt",
                     "a blue square", "--guidance-scale", "3", "--num-samples", "2", "--steps", "4",
                     *map(str, extra), "--out", str(out)])
        assert out.stat().st_size > 0
        summaries[name] = capsys.readouterr().out
    # the summary names the steps that ran: 4 from pure noise; from t = round(0.5 x 19) = 10, t = 10 and
    # the grid's points below it (15, 10, 5, 0 -> 10, 5, 0)
    assert "4 uniform steps (4 NFE)" in summaries["t2i"] and "3 uniform steps from t = 10 (3 NFE), strength 0.5" \
        in summaries["img2img"] and "strength 1" in summaries["inpaint"]
    # an existing output is never replaced unasked; a photo as a mask is not read as a soft mask
    with pytest.raises(SystemExit):
        sample.main([str(run / "best.pt"), "--prompt", "a red disc", "--steps", "2", "--out", str(tmp_path / "t2i.png")])
    assert "t2i.png exists; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main([str(run / "best.pt"), "--prompt", "a red disc", "--init-image", str(init), "--mask", str(init),
                     "--out", str(tmp_path / "y.png")])
    assert "of its pixels are grey; give a black-and-white image" in capsys.readouterr().err
    # a prompt the model would misread is one line naming the word, never an untrained <unk>
    with pytest.raises(SystemExit) as stop:
        sample.main([str(run / "best.pt"), "--prompt", "a red disc in the center", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "'center' is not in this model's vocabulary" in err and "nearest: centre" in err
    with pytest.raises(SystemExit):
        sample.main([str(run / "best.pt"), "--prompt", " ".join(["a red disc"] * 5), "--out", str(tmp_path / "x.png")])
    assert "has 15 words; this model reads at most 10" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="negative prompt has no effect at guidance scale 1"):
        pipe(1, prompt="a red disc", negative_prompt="a square", sample_steps=2)
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as stop:
        sample.main([str(run / "best.pt"), "--mask", str(init)])
    assert stop.value.code == 2 and "need --init-image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main([str(run / "best.pt"), "--init-image", str(tmp_path), "--out", str(tmp_path / "z.png")])
    assert "is a folder; give an image file" in capsys.readouterr().err
    sample.main([str(run / "best.pt"), "--figures", str(tmp_path / "figs"), "--guidance-scale", "3",
                 "--steps", "3"])                                          # the run's sample prompts
    for name in ("reverse_process.png", "prompt_grid.png", "cross_attention.png", "img2img.png", "inpainting.png"):
        assert (tmp_path / "figs" / name).stat().st_size > 0, name


def test_latent_text_run_from_python_resumes_with_its_tokenizer(tmp_path):
    from sdlab.diffusion import DiffusionConfig
    from sdlab.latent import LatentConfig
    from sdlab.recipes import DiffusionRun, VAERun, train_diffusion, train_vae
    from sdlab.trainer import TrainConfig

    data = DataConfig(dataset="scenes", synthetic_size=40, image_size=16, batch_size=20)
    train_vae(VAERun(data=data, vae=VAEConfig(base_channels=8, channel_mults=(1, 2)),
                     train=TrainConfig(epochs=1, save_dir=str(tmp_path / "vae"), device="cpu")))
    run = DiffusionRun(data=data, train=TrainConfig(epochs=1, save_dir=str(tmp_path / "ldm"), device="cpu"),
                       unet=UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(8,)),
                       diffusion=DiffusionConfig(num_timesteps=20),
                       latent=LatentConfig(latent=True, vae_checkpoint=str(tmp_path / "vae" / "best.pt")),
                       text=TextConfig(text_cond=True, context_length=12, text_width=16, text_heads=2, text_layers=1))
    first = train_diffusion(run)
    vocab = first.pipeline.tokenizer.vocab
    images = first.pipeline(2, prompt="a large red disc in the centre", guidance_scale=2.0, sampler="ddim",
                            sample_steps=3)
    assert images.shape == (2, 3, 16, 16) and first.pipeline.model.cfg.context_dim == 16
    import dataclasses
    again = train_diffusion(dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=2, resume="last")))
    assert [h["epoch"] for h in again.trainer.history] == [1, 2]
    assert again.pipeline.tokenizer.vocab == vocab
