"""Reliability benchmark: the fault matrix of tests/test_faults.py as real processes, and a
SIGKILL campaign against training with and without step checkpoints.

    python bench/reliability.py [--kills 12] [--save-every-steps 10] [--out DIR]

Part 1 runs every case of `tests/test_faults.CASES` with `python -m sdlab.cli.<command>` and
counts, per command: cases, tracebacks, cases whose stderr was not exactly one line, wrong exit
statuses, missing expected text, and cases that changed a file.

Part 2 trains the default CPU VAE (base 32, 0.43M parameters) on the synthetic dataset at
32x32 (2,000 images, batch 64: 31 steps per epoch, 3 epochs) and SIGKILLs it at a moment drawn
uniformly over what is left of the run (from the step in last.pt and an uninterrupted run's
duration, plus 5 s), resuming after each kill, `--kills` times, then
lets it finish (or stops early when a run completes before its kill). It reports how many kills left an unreadable last.pt, the optimizer steps each
kill lost (the step the progress bar had reached minus the step in last.pt) and whether the
final weights equal an uninterrupted run's bit for bit. It runs once with
`--save-every-steps N` and once with epoch-end checkpoints only.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sdlab.checkpoint import load_checkpoint  # noqa: E402
from test_faults import CASES, file_state, make_world, resolve  # noqa: E402

MODULES = {"train_vae": "sdlab.cli.train_vae", "train_diffusion": "sdlab.cli.train_diffusion",
           "sample": "sdlab.cli.sample", "eval_vae": "sdlab.cli.eval_vae",
           "eval_diffusion": "sdlab.cli.eval_diffusion"}


def fault_matrix(root: Path) -> dict[str, dict[str, int]]:
    places = make_world(root)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for case in CASES:
        args, expect = resolve(case, places)
        before = file_state(places["w"], places["s"])
        result = subprocess.run([sys.executable, "-m", MODULES[case.command], *args], cwd=places["s"],
                                env=env, text=True, capture_output=True, timeout=600)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        row = table[case.command]
        row["cases"] += 1
        row["tracebacks"] += "Traceback" in result.stderr
        row["not one line"] += len(lines) != 1
        row["wrong exit status"] += result.returncode != case.code
        row["expected text missing"] += not (lines and expect in lines[-1])
        row["files changed"] += file_state(places["w"], places["s"]) != before
        if "Traceback" in result.stderr or len(lines) != 1 or result.returncode != case.code:
            print(f"  {case.id}: exit {result.returncode}\n    " + "\n    ".join(lines[-3:]))
    return table


STEPS_PER_EPOCH = 31
PROGRESS = re.compile(r"epoch (\d+)/\d+:\s+\d+%\|[^|]*\|\s*(\d+)/\d+")


def kill_campaign(root: Path, kills: int, save_every: int, seed: int) -> dict:
    base = [ROOT / "diffusers" / "train_vae.py", "--dataset", "synthetic", "--synthetic-size", "2000",
            "--batch", "64", "--epochs", "3", "--device", "cpu", "--precision", "fp32",
            "--save-every-steps", str(save_every), "--ema-decay", "0.99"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start = time.time()
    subprocess.run([sys.executable, *map(str, base), "--save-dir", str(root / "reference")], env=env,
                   check=True, capture_output=True, timeout=3600)
    duration = time.time() - start
    rng, killed, lost, unreadable = random.Random(seed), root / "killed", [], 0
    while True:
        resume = ["--resume"] if (killed / "last.pt").exists() else []
        proc = subprocess.Popen([sys.executable, *map(str, base), "--save-dir", str(killed), *resume],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if len(lost) == kills:
            _, err = proc.communicate(timeout=3600)
            assert proc.returncode == 0, err
            break
        saved = load_checkpoint(killed / "last.pt")["step"] if resume else 0
        try:   # a moment drawn over what is left of the run (start-up included)
            proc.wait(timeout=rng.uniform(0, duration * (1 - saved / (3 * STEPS_PER_EPOCH)) + 5))
            assert proc.returncode == 0, proc.stderr.read()
            break                         # it finished before the kill: training is complete
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        reached = PROGRESS.findall(err.replace("\r", "\n"))
        try:
            saved = load_checkpoint(killed / "last.pt")["step"] if (killed / "last.pt").exists() else 0
        except Exception:
            unreadable += 1
            continue
        if reached:
            epoch, batch = map(int, reached[-1])
            lost.append(max((epoch - 1) * STEPS_PER_EPOCH + batch - saved, 0))
    expected, got = load_checkpoint(root / "reference" / "last.pt"), load_checkpoint(killed / "last.pt")
    identical = all(torch.equal(got[p][k], v) for p in ("model", "ema") for k, v in expected[p].items())
    return {"kills": len(lost), "lost_max": max(lost), "lost_median": statistics.median(lost),
            "unreadable": unreadable, "identical": identical, "uninterrupted_s": duration,
            "leftover_temporaries": len(list(killed.glob(".*.tmp*")))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--save-every-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-matrix", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_matrix:
            table = fault_matrix(Path(tmp) / "matrix")
            columns = ["cases", "tracebacks", "not one line", "wrong exit status", "expected text missing",
                       "files changed"]
            print("| command | " + " | ".join(columns) + " |")
            print("|---" * (len(columns) + 1) + "|")
            for command, row in table.items():
                print(f"| {command} | " + " | ".join(str(row[c]) for c in columns) + " |")
            print("| all | " + " | ".join(str(sum(r[c] for r in table.values())) for c in columns) + " |")
        for save_every in (args.save_every_steps, 0):
            result = kill_campaign(Path(tmp) / f"kill{save_every}", args.kills, save_every, args.seed)
            print(f"last.pt {f'every {save_every} steps' if save_every else 'at epoch ends'}: "
                  f"{result['kills']} SIGKILLs during training, {result['unreadable']} unreadable "
                  f"checkpoints, {result['leftover_temporaries']} leftover temporaries; optimizer steps "
                  f"lost per kill median {result['lost_median']}, max {result['lost_max']} (of "
                  f"{3 * STEPS_PER_EPOCH}; uninterrupted run {result['uninterrupted_s']:.0f} s with "
                  f"start-up); final weights {'bitwise identical' if result['identical'] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
