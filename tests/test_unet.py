import pytest
import torch

from sdlab.unet import PRESETS, UNet, UNetConfig

from conftest import ROOT, run_script, scalar_tags


@pytest.mark.parametrize("cfg", [
    UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), image_size=8),
    UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(8, 2),
               heads=2, image_size=8, in_channels=1),
    UNetConfig(base_channels=16, channel_mults=(1,), attention_resolutions=(), image_size=4, in_channels=4),
])
def test_unet_keeps_the_input_shape(cfg):
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    assert UNet(cfg)(x, torch.tensor([0, 5, 9])).shape == x.shape


def test_output_depends_on_t_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), image_size=8,
                     dropout=0.0, num_classes=3)
    net = UNet(cfg)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # the zero init would hide t
    x = torch.randn(2, 3, 8, 8)
    a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([700, 700]))
    assert not torch.allclose(a, b)
    c = net(x, torch.tensor([1, 1]), torch.tensor([0, 2]))
    assert not torch.allclose(a, c)                      # the class label changes the output
    (a.pow(2).mean() + c.pow(2).mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_attention_is_a_real_attention():
    # Permuting the spatial positions of the input permutes the attention output the same way
    # (self-attention is permutation-equivariant), and the attention weights sum to one.
    from sdlab.layers import Attention

    torch.manual_seed(0)
    attn = Attention(8, heads=2)
    x = torch.randn(2, 8, 4, 4)
    perm = torch.randperm(16)
    out = attn(x).flatten(2)[:, :, perm]
    out_perm = attn(x.flatten(2)[:, :, perm].reshape(2, 8, 4, 4)).flatten(2)
    assert torch.allclose(out, out_perm, atol=1e-5)
    with torch.no_grad():
        attn.out.weight.zero_()
        attn.out.bias.zero_()
    assert torch.equal(attn(x), x)


def test_ddpm_cifar10_preset_has_the_papers_size():
    n = sum(p.numel() for p in UNet(UNetConfig(**PRESETS["ddpm-cifar10"])).parameters())
    assert 35.5e6 < n < 36.0e6


def test_train_diffusion_from_inside_diffusers_and_sample_command(tmp_path):
    save, logs = tmp_path / "out", tmp_path / "logs"
    result = run_script(["train_diffusion.py", "--epochs", "1", "--dataset", "synthetic",
                         "--synthetic-size", "32", "--imgsz", "8", "--batch", "16",
                         "--hidden-dim", "8", "--down-scale", "1,2", "--is-attn", "0,1",
                         "--noise-steps", "20", "--num-samples", "4", "--sample-steps", "3",
                         f"--save-dir={save}", f"--log-dir={logs}", "--visualize", "--devices", "cpu"],
                        cwd=ROOT / "diffusers")
    assert result.returncode == 0, result.stderr
    for name in ("best.pt", "last.pt", "samples/epoch_0001.png", "loss_curves.png", "forward_process.png",
                 "reverse_process.png", "schedules.png", "loss_by_timestep.png"):
        assert (save / name).stat().st_size > 0, name
    assert {"train/loss", "train/mse", "val/loss", "val/mse", "lr"} <= scalar_tags(logs)
    from sdlab.checkpoint import load_checkpoint
    config = load_checkpoint(save / "best.pt")["config"]
    assert config["unet"]["attention_resolutions"] == [4] and config["diffusion"]["num_timesteps"] == 20

    grid = tmp_path / "grid.png"
    sampled = run_script(["-m", "sdlab.cli.sample", save / "best.pt", "--num-samples", "6", "--sampler",
                          "ddim", "--steps", "4", "--seed", "0", "--out", grid, "--per-image-dir",
                          tmp_path / "each"], cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert grid.stat().st_size > 0 and len(list((tmp_path / "each").glob("*.png"))) == 6
    evaluated = run_script(["-m", "sdlab.cli.eval_diffusion", save / "best.pt", "--num-images", "4",
                            "--timesteps", "5"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "bits/dim" in evaluated.stdout


def test_sample_command_refuses_a_vae_checkpoint_in_one_line(tmp_path):
    from sdlab.checkpoint import save_checkpoint

    save_checkpoint({"config": {"kind": "vae"}}, tmp_path / "vae.pt")
    result = run_script(["-m", "sdlab.cli.sample", tmp_path / "vae.pt"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a diffusion checkpoint" in result.stderr


def test_fast_dropout_drops_at_rate_p_and_keeps_the_mean():
    from sdlab.kernels.dropout import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.1)
    x = torch.ones(400_000)
    y = drop(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.1, abs=0.003)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)               # inverted scaling
    values = y.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.9)
    assert not torch.equal(drop(x), y)                                    # a fresh mask each call
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0)(x), x)
