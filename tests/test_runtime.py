import pytest
import torch

from sdlab.config import ConfigError
from sdlab.runtime import autocast, check_device_name, default_precision, pick_device, resolve_precision


def test_device_names_are_checked_before_the_hardware():
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        check_device_name(name)
    for name in ("gpu", "cuda0", "cuda:", "CPU", "cuda:-1", ""):
        with pytest.raises(ConfigError, match="choose auto"):
            check_device_name(name)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA device is visible"):
            pick_device(name)


def test_precision_rules():
    cpu = torch.device("cpu")
    assert default_precision(cpu) in ("fp32", "bf16")
    assert resolve_precision(cpu, "bf16") == "bf16"
    assert resolve_precision(cpu, "auto") == default_precision(cpu)
    with pytest.raises(ConfigError, match="needs CUDA"):
        resolve_precision(cpu, "fp16")
    with pytest.raises(ConfigError, match="choose one of auto, fp32, bf16, fp16"):
        resolve_precision(cpu, "fp8")
    with autocast(cpu, "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("command, run_cls", [("train_diffusion", "DiffusionRun"), ("train_vae", "VAERun"),
                                               ("train_classifier", "ClassifierRun")])
def test_the_python_api_and_the_command_line_pick_the_same_defaults(command, run_cls):
    import importlib

    import sdlab.recipes as recipes
    from sdlab.trainer import TrainConfig

    configs, _ = importlib.import_module(f"sdlab.cli.{command}").parse(["--device", "cpu"])
    run = getattr(recipes, run_cls).recommended(train={"device": "cpu"})
    assert vars(run) == configs
    assert run.train.precision == "auto" == TrainConfig().precision     # resolved alike when the run starts
    tuned = getattr(recipes, run_cls).recommended(train={"device": "cpu", "epochs": 1})
    assert tuned.train.epochs == 1 and tuned.train.lr == run.train.lr
    with pytest.raises(TypeError, match="no section"):
        getattr(recipes, run_cls).recommended(nonsense={})
