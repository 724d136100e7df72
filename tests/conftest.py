"""Shared fixtures: tiny data made on the spot (tests never download or read shared data)."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def run_script(args, cwd, timeout=300, env=None, **kwargs):
    """Run a Python entry script in a subprocess, returning CompletedProcess (text);
    `env` adds variables to this process's environment."""
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", **(env or {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


def scalar_tags(log_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])
