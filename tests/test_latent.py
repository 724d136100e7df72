import pytest
import torch

from sdlab.checkpoint import state_digest
from sdlab.conditioning import ClassCondition
from sdlab.data import make_synthetic
from sdlab.diffusion import NoiseSchedule
from sdlab.diffusion.guidance import drop_labels, guided
from sdlab.latent import decode_latents, encode_splits
from sdlab.pipeline import DiffusionPipeline
from sdlab.unet import UNet, UNetConfig
from sdlab.vae import VAE, VAEConfig

from conftest import ROOT, run_script

TINY_VAE = VAEConfig(base_channels=8, channel_mults=(1, 2), latent_channels=4)


def test_latents_round_trip_through_the_cache_with_the_stored_scale_factor(tmp_path, monkeypatch):
    torch.manual_seed(0)
    vae = VAE(TINY_VAE).eval()
    vae_sha = state_digest(vae.state_dict())
    train, test = make_synthetic(40, 16, seed=0), make_synthetic(12, 16, seed=1)
    z_train, z_test, s = encode_splits(vae, vae_sha, train, test, torch.device("cpu"), tmp_path)
    assert len(list(tmp_path.glob("latents-*.pt"))) == 1
    assert z_train.images.shape == (40, 4, 4, 4) and z_train.images.dtype == torch.float32
    assert torch.equal(z_train.labels, train.labels)
    assert z_train.images.std().item() == pytest.approx(1.0, rel=1e-4)      # s = 1 / std
    with torch.no_grad():
        mu = vae.encode(train.images.float() / 127.5 - 1).mode()
    assert torch.allclose(z_train.images, mu * s, atol=1e-5)

    import sdlab.latent
    monkeypatch.setattr(sdlab.latent, "encode_images", lambda *a, **k: pytest.fail("cache not used"))
    again_train, again_test, s2 = encode_splits(vae, vae_sha, train, test, torch.device("cpu"), tmp_path)
    assert s2 == s and torch.equal(again_train.images, z_train.images)
    assert torch.equal(again_test.images, z_test.images)
    images = decode_latents(vae, again_train.images[:3], s2)
    with torch.no_grad():
        assert torch.allclose(images, vae.decode(mu[:3]).clamp(-1, 1), atol=1e-5)


def test_class_conditional_unet_depends_on_the_label_and_the_null_label():
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(), image_size=8,
                          num_classes=3, dropout=0.0))
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    outs = [net(x, t, torch.tensor([c, c])) for c in range(3)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    null = net(x, t, torch.tensor([3, 3]))
    assert torch.equal(net(x, t, None), null)          # no label means the null class
    assert not torch.allclose(null, outs[0])


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mults=(1,), attention_resolutions=(), image_size=4,
                          num_classes=3, dropout=0.0))
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x, t, labels = torch.randn(4, 3, 4, 4), torch.tensor([1, 5, 9, 2]), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, uncond = net(x, t, labels), net(x, t, None)
        assert torch.allclose(guided(net, labels, 0.0, 3)(x, t), uncond, atol=1e-5)
        assert torch.allclose(guided(net, labels, 1.0, 3)(x, t), cond, atol=1e-5)
        assert torch.allclose(guided(net, labels, 3.0, 3)(x, t), uncond + 3 * (cond - uncond), atol=1e-4)


def test_label_dropout_rate_matches_the_flag():
    labels = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(labels, 0.1, 10, torch.Generator().manual_seed(1))
    rate = (dropped == 10).float().mean().item()
    assert rate == pytest.approx(0.1, abs=0.003)
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    assert torch.equal(drop_labels(labels, 0.0, 10), labels)


def test_latent_sample_path_decodes_to_images_in_range():
    torch.manual_seed(0)
    vae = VAE(TINY_VAE).eval()
    net = UNet(UNetConfig(in_channels=4, base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,),
                          image_size=4, num_classes=2)).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=1.0)   # wild outputs, so clamping matters
    pipe = DiffusionPipeline(net, NoiseSchedule.create("linear", 20), vae=vae, scale_factor=0.5,
                             conditioning=ClassCondition(("a", "b")))
    images = pipe(3, labels=torch.tensor([0, 1, 0]), guidance_scale=3.0, sampler="ddim", sample_steps=4,
                  generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    assert pipe.class_ids(["b", "0"]) == [1, 0]
    with pytest.raises(ValueError, match="choose one of a, b"):
        pipe.class_ids(["horse"])


def test_tiny_stable_diffusion_end_to_end_from_the_command_line(tmp_path):
    vae_dir, ldm_dir = tmp_path / "vae", tmp_path / "ldm"
    common = ["--dataset", "synthetic", "--synthetic-size", "40", "--imgsz", "16", "--batch", "20",
              "--epochs", "1", "--device", "cpu"]
    trained = run_script(["train_vae.py", *common, "--num-chans", "8", "--save-dir", vae_dir],
                         cwd=ROOT / "diffusers")
    assert trained.returncode == 0, trained.stderr
    ldm = run_script(["train_diffusion.py", *common, "--latent", "--vae-checkpoint", vae_dir / "best.pt",
                      "--class-cond", "--hidden-dim", "8", "--down-scale", "1,2", "--attention-resolutions", "8",
                      "--noise-steps", "20", "--num-samples", "10", "--sample-steps", "3", "--save-dir", ldm_dir,
                      "--visualize"], cwd=ROOT / "diffusers")
    assert ldm.returncode == 0, ldm.stderr
    assert "scale factor s = 1/std" in ldm.stdout
    for name in ("best.pt", "samples/epoch_0001.png", "class_grid.png", "guidance_sweep.png",
                 "latent_pipeline.png", "reverse_process.png", "loss_by_timestep.png"):
        assert (ldm_dir / name).stat().st_size > 0, name
    grid = tmp_path / "guided.png"
    sampled = run_script(["-m", "sdlab.cli.sample", ldm_dir / "best.pt", "--class", "disc", "--class", "ring",
                          "--guidance-scale", "3", "--num-samples", "4", "--sampler", "dpmpp_2m", "--steps", "3",
                          "--out", grid], cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert grid.stat().st_size > 0 and "dpmpp_2m, 3 karras steps (3 NFE)" in sampled.stdout
    wrong = run_script(["-m", "sdlab.cli.sample", ldm_dir / "best.pt", "--class", "horse"], cwd=tmp_path)
    assert wrong.returncode == 2 and "choose one of disc" in wrong.stderr
    from sdlab.cli import sample
    sample.main([str(ldm_dir / "best.pt"), "--figures", str(tmp_path / "figs"), "--guidance-scale", "3", "--steps", "3"])
    for name in ("reverse_process.png", "latent_pipeline.png", "class_grid.png", "guidance_sweep.png"):
        assert (tmp_path / "figs" / name).stat().st_size > 0, name


def test_latent_class_conditional_run_resumes_and_its_checkpoint_carries_its_vae(tmp_path, capsys):
    import shutil

    from sdlab.checkpoint import load_checkpoint
    from sdlab.cli import sample, train_diffusion, train_vae

    common = ["--dataset", "synthetic", "--synthetic-size", "40", "--imgsz", "16", "--batch", "20",
              "--device", "cpu", "--precision", "fp32"]
    vae_dir, ldm_dir = tmp_path / "vae", tmp_path / "ldm"
    train_vae.main([*common, "--epochs", "1", "--num-chans", "8", "--save-dir", str(vae_dir)])
    ldm = [*common, "--latent", "--vae-checkpoint", str(vae_dir / "best.pt"), "--class-cond",
           "--hidden-dim", "8", "--down-scale", "1,2", "--attention-resolutions", "8", "--noise-steps", "20",
           "--num-samples", "4", "--sample-steps", "2", "--save-dir", str(ldm_dir)]
    train_diffusion.main([*ldm, "--epochs", "1"])
    first = load_checkpoint(ldm_dir / "last.pt")
    assert first["config"]["unet"]["attention_resolutions"] == [2]         # 8 px / f = 4
    train_diffusion.main([*ldm, "--epochs", "2", "--resume"])               # the same command + --resume
    resumed = load_checkpoint(ldm_dir / "last.pt")
    assert resumed["epoch"] == 2 and resumed["config"]["unet"] == first["config"]["unet"]
    attention = lambda state: sum(name.endswith("qkv.weight") for name in state["model"])
    assert attention(resumed) == attention(first) > 1     # the 4x4 level's blocks, not just the middle
    assert resumed["frozen"]["vae"]["sha256"] == resumed["config"]["latent_vae"]["vae_sha256"]

    args = ["--class", "disc", "--num-samples", "2", "--steps", "2", "--device", "cpu"]
    sample.main([str(ldm_dir / "best.pt"), *args, "--out", str(tmp_path / "before.png")])
    moved = tmp_path / "elsewhere"
    shutil.move(ldm_dir, moved)                    # the run folder moves, the VAE is replaced...
    train_vae.main([*common, "--epochs", "1", "--num-chans", "8", "--save-dir", str(vae_dir),
                    "--overwrite", "--seed", "5"])
    sample.main([str(moved / "best.pt"), *args, "--out", str(tmp_path / "after.png")])
    assert (tmp_path / "before.png").read_bytes() == (tmp_path / "after.png").read_bytes()
    shutil.rmtree(vae_dir)                         # ... and then deleted: it still samples
    sample.main([str(moved / "best.pt"), *args, "--out", str(tmp_path / "gone.png")])
    assert (tmp_path / "gone.png").read_bytes() == (tmp_path / "before.png").read_bytes()


def test_resuming_a_latent_run_with_another_vae_is_refused(tmp_path, capsys):
    from sdlab.cli import train_diffusion, train_vae

    common = ["--dataset", "synthetic", "--synthetic-size", "40", "--imgsz", "16", "--batch", "20",
              "--device", "cpu", "--precision", "fp32", "--epochs", "1"]
    for seed, folder in ((0, "vae"), (1, "other")):
        train_vae.main([*common, "--num-chans", "8", "--seed", str(seed), "--save-dir", str(tmp_path / folder)])
    ldm = [*common, "--latent", "--hidden-dim", "8", "--down-scale", "1,2", "--attention-resolutions", "8",
           "--noise-steps", "20", "--num-samples", "4", "--sample-steps", "2", "--save-dir", str(tmp_path / "ldm")]
    train_diffusion.main([*ldm, "--vae-checkpoint", str(tmp_path / "vae" / "best.pt")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        train_diffusion.main([*ldm, "--vae-checkpoint", str(tmp_path / "other" / "best.pt"), "--resume"])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "is not the VAE this run was trained with" in err
    assert len(err.splitlines()) == 1
    train_diffusion.main([*ldm, "--epochs", "2", "--resume"])     # the carried VAE needs no flag


def test_the_readme_python_example_trains_and_samples(tmp_path, monkeypatch):
    import re

    code = re.search(r"## From Python.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    images = namespace["images"]
    assert images.shape == (10, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert (tmp_path / "runs" / "ldm" / "best.pt").exists()
    assert namespace["ldm"].pipeline.classes[:2] == ("disc", "square")
