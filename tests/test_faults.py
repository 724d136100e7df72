"""Faults and fuzz: every command against bad numbers, paths, files, damaged checkpoints and
caches, configs and images.

Each case in CASES must end with exactly one line on stderr naming what is wrong, no traceback,
exit status 2, and every file left as it was. The commands run in this process (their `main`,
behind the same error boundary as the installed scripts); a few run as real processes too.
`bench/reliability.py` runs the same matrix as subprocesses and counts the outcomes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sdlab.checkpoint import load_checkpoint
from sdlab.cli import eval_diffusion, eval_vae, sample, train_diffusion, train_vae
from sdlab.outputs import LOCK_NAME

from conftest import ROOT, run_script

COMMANDS = {"train_vae": train_vae.main, "train_diffusion": train_diffusion.main, "sample": sample.main,
            "eval_vae": eval_vae.main, "eval_diffusion": eval_diffusion.main}
DATA = ["--dataset", "synthetic", "--synthetic-size", "40", "--imgsz", "16", "--batch", "20",
        "--epochs", "1", "--device", "cpu", "--precision", "fp32"]
VAE = [*DATA, "--num-chans", "8"]
DDPM = [*DATA, "--hidden-dim", "8", "--down-scale", "1,2", "--attention-resolutions", "8",
        "--noise-steps", "20", "--num-samples", "4", "--sample-steps", "2"]
UNWRITABLE = "/proc/sdlab-nowhere"     # cannot be created, not even by root


@dataclass(frozen=True)
class Case:
    command: str
    args: tuple[str, ...]
    expect: str           # a piece of the one stderr line
    code: int = 2

    @property
    def id(self) -> str:
        return f"{self.command}:{' '.join(self.args)}"[:90]


def case(command: str, args: str, expect: str, code: int = 2) -> Case:
    return Case(command, tuple(args.split()), expect, code)


# {vae}, {ddpm}, {ldm}: trained runs (folders); {w}: the world folder of prepared files;
# {s}: a scratch folder where outputs may go.
CASES = [
    # ---- train_vae: numbers
    *(case("train_vae", f"{{VAE}} --save-dir {{s}}/r {flag}", expect) for flag, expect in [
        ("--lr inf", "argument --lr: must be a finite number"),
        ("--lr nan", "argument --lr: must be a finite number"),
        ("--lr 0", "--lr: must be > 0"),
        ("--weight-decay inf", "argument --weight-decay: must be a finite number"),
        ("--min-delta nan", "argument --min-delta: must be a finite number"),
        ("--max-minutes inf", "argument --max-minutes: must be a finite number"),
        ("--kl-weight inf", "argument --kl-weight/--B: must be a finite number"),
        ("--kl-weight -1", "--kl-weight: must be >= 0"),
        ("--epochs 0", "--epochs: must be >= 1"),
        ("--batch -3", "--batch-size: must be >= 1"),
        ("--grad-accum 0", "--grad-accum: must be >= 1"),
        ("--save-every-steps -1", "--save-every-steps: must be >= 0"),
        ("--beta1 1", "--beta1: must be in [0, 1)"),
        ("--ema-decay 1", "--ema-decay: must be in [0, 1)"),
        ("--gamma 0", "--gamma: must be in (0, 1]"),
        ("--imgsz 30", "--image-size"),
        ("--imgsz 4", "--image-size: must be >= 8"),
        ("--lr ten", "expected a number, got 'ten'"),
        ("--epochs 1.5", "invalid int value"),
        ("--scheduler linear", "invalid choice"),
        ("--precision fp16", "--precision fp16: needs CUDA"),
        ("--device cuda", "--device cuda: no CUDA device is visible"),
        ("--device cuda:1", "--device cuda:1: no CUDA device is visible"),
        ("--device gpu", "--device: got 'gpu'; choose auto"),
        ("--device mps", "--device mps: mps: this torch build or machine has no Apple GPU"),
        ("--resume --overwrite", "--overwrite: cannot be combined with --resume"),
        ("--channel-multipliers 1,x", "expected ints like 1,2,2"),
        ("--in-chans 1", "--in-channels: is 1 but --dataset synthetic has 3 channels"),
    ]),
    # ---- train_vae: paths, files, configs, data
    case("train_vae", "{VAE} --save-dir {w}/notes.txt", "--save-dir {w}/notes.txt: {w}/notes.txt is a file"),
    case("train_vae", "{VAE} --save-dir {w}/notes.txt/run", "is a file, not a folder"),
    case("train_vae", "{VAE} --save-dir {s}/r --log-dir {w}/notes.txt", "--log-dir {w}/notes.txt"),
    case("train_vae", f"{{VAE}} --save-dir {UNWRITABLE}", f"--save-dir {UNWRITABLE}: cannot write there"),
    case("train_vae", "{VAE} --save-dir {vae}", "already holds last.pt and best.pt of an earlier run: add --resume"),
    case("train_vae", "{VAE} --save-dir {s}/r --resume", "--resume: no checkpoint at {s}/r/last.pt"),
    case("train_vae", "{VAE} --save-dir {s}/r --resume {ddpm}/last.pt", "is not a VAE checkpoint (kind 'diffusion')"),
    case("train_vae", "{VAE} --save-dir {s}/r --resume {w}/random.pt", "cannot read checkpoint {w}/random.pt"),
    case("train_vae", "{VAE} --save-dir {s}/r --resume {w}/truncated.pt", "cannot read checkpoint {w}/truncated.pt"),
    case("train_vae", "{VAE} --save-dir {s}/r --resume {w}/pickle.pt", "cannot read checkpoint {w}/pickle.pt"),
    case("train_vae", "{VAE} --save-dir {s}/r --resume {w}/weights-only.pt", "is not a VAE checkpoint (kind None)"),
    case("train_vae", "{VAE} --save-dir {s}/r --config {w}/missing.json", "--config: no such file"),
    case("train_vae", "{VAE} --save-dir {s}/r --config {w}/broken.json", "--config: cannot parse"),
    case("train_vae", "{VAE} --save-dir {s}/r --config {w}/unknown.json", "unknown keys colour"),
    case("train_vae", "{VAE} --save-dir {s}/r --config {w}/nan-lr.json", "--lr: must be a finite number"),
    case("train_vae", "{VAE} --save-dir {s}/r --config {w}/list.json", "must hold an object of flag: value pairs (got list)"),
    case("train_vae", "{VAE} --save-dir {s}/r --config {w}/text-lr.json", "text-lr.json: lr must be a number (got 'fast')"),
    case("train_vae", "{VAE} --save-dir {s}/r --config {w}/string-epochs.toml", "epochs must be a whole number (got '3')"),
    case("train_vae", "{VAE} --save-dir {s}/r --dataset folder --data-dir {w}/missing", "--data-dir {w}/missing does not exist"),
    case("train_vae", "{VAE} --save-dir {s}/r --dataset folder --data-dir {w}/empty", "holds no class folders"),
    case("train_vae", "{VAE} --save-dir {s}/r --dataset folder --data-dir {w}/half", "has train/ but no test/"),
    case("train_vae", "{VAE} --save-dir {s}/r --dataset folder --data-dir {w}/bad-image", "cannot read image"),
    case("train_vae", "{VAE} --save-dir {s}/r --dataset folder --data-dir {w}/mixed", "train/ and test/ hold different class folders"),
    # ---- train_diffusion
    *(case("train_diffusion", f"{{DDPM}} --save-dir {{s}}/r {flag}", expect) for flag, expect in [
        ("--latent", "--vae-checkpoint: --latent needs --vae-checkpoint PATH"),
        ("--vae-checkpoint {vae}/best.pt", "--vae-checkpoint: is read only by latent runs: add --latent"),
        ("--latent --vae-checkpoint {w}/missing.pt", "--vae-checkpoint: no checkpoint at {w}/missing.pt"),
        ("--latent --vae-checkpoint {ddpm}/best.pt", "is not a VAE checkpoint (kind 'diffusion')"),
        ("--latent --vae-checkpoint {w}/random.pt", "cannot read checkpoint"),
        ("--guidance-scale nan", "argument --guidance-scale: must be a finite number"),
        ("--guidance-scale -1", "--guidance-scale: must be >= 0"),
        ("--cond-drop-prob 1", "--cond-drop-prob"),
        ("--eta 2", "--eta: must be in [0, 1]"),
        ("--eta nan", "argument --eta: must be a finite number"),
        ("--dropout nan", "argument --dropout: must be a finite number"),
        ("--beta-start 0.5 --beta-end 0.1", "--beta-start"),
        ("--min-snr-gamma inf", "argument --min-snr-gamma: must be a finite number"),
        ("--noise-steps 1", "--num-timesteps: must be >= 2"),
        ("--is-attn 1,0,1", "--is-attn: give one 0/1 per level"),
        ("--no-residual", "--no-residual"),
        ("--sample-steps 0", "--sample-steps: must be >= 1"),
        ("--resume {vae}/last.pt", "is not a diffusion checkpoint (kind 'vae')"),
        ("--in-chans 1", "--in-channels: is 1"),
    ]),
    case("train_diffusion", "{DDPM} --save-dir {ddpm}", "already holds last.pt and best.pt"),
    case("train_diffusion", "{DDPM} --save-dir {w}/notes.txt", "is a file, not a folder"),
    # ---- sample
    *(case("sample", f"{{ddpm}}/best.pt --steps 2 --num-samples 2 {flag}", expect) for flag, expect in [
        ("--out {s}/grid", "--out {s}/grid: the name must end in .png"),
        ("--out {s}/grid.xyz", "the name must end in .png"),
        ("--out {w}", "--out {w} is a folder"),
        (f"--out {UNWRITABLE}/grid.png", "cannot write there"),
        ("--out {w}/notes.txt/grid.png", "is a file, not a folder"),
        ("--per-image-dir {w}/notes.txt --out {s}/g.png", "--per-image-dir"),
        ("--num-samples 0", "--num-samples must be >= 1"),
        ("--steps -1", "--sample-steps: must be >= 1"),
        ("--batch-size 0", "--batch-size must be >= 1"),
        ("--nrow 0", "--nrow must be >= 1"),
        ("--eta nan", "must be a finite number"),
        ("--eta 1.5", "--eta: must be in [0, 1]"),
        ("--sampler heun --eta 0.5", "--eta: applies to the ddim sampler only"),
        ("--spacing cubic", "invalid choice"),
        ("--guidance-scale inf", "must be a finite number"),
        ("--guidance-scale -2", "--guidance-scale must be >= 0"),
        ("--sampler dpm", "invalid choice: 'dpm'"),
        ("--device cuda --out {s}/g.png", "--device: no CUDA device is visible"),
        ("--class disc --out {s}/g.png", "--class: this checkpoint is not class-conditional"),
    ]),
    case("sample", "{ldm}/best.pt --class horse --out {s}/g.png", "--class 'horse': choose one of disc"),
    case("sample", "{w}/missing.pt --out {s}/g.png", "no checkpoint at {w}/missing.pt"),
    case("sample", "{w}/random.pt --out {s}/g.png", "cannot read checkpoint"),
    case("sample", "{w}/truncated.pt --out {s}/g.png", "cannot read checkpoint"),
    case("sample", "{w}/notes.txt --out {s}/g.png", "cannot read checkpoint"),
    case("sample", "{w}/pickle.pt --out {s}/g.png", "cannot read checkpoint"),
    case("sample", "{w}/mismatched.pt --out {s}/g.png", "its weights do not fit the model"),
    case("sample", "{vae}/best.pt --out {s}/g.png", "is not a diffusion checkpoint (kind 'vae')"),
    case("sample", "{w} --out {s}/g.png", "no checkpoint at"),
    # ---- eval_vae
    case("eval_vae", "{ddpm}/best.pt --out {s}/e.json", "is not a VAE checkpoint (kind 'diffusion')"),
    case("eval_vae", "{w}/missing.pt", "no checkpoint at"),
    case("eval_vae", "{w}/random.pt --out {s}/e.json", "cannot read checkpoint"),
    case("eval_vae", "{vae}/best.pt --num-images -1 --out {s}/e.json", "--num-images must be >= 0"),
    case("eval_vae", "{vae}/best.pt --batch-size 0 --out {s}/e.json", "--batch-size must be >= 1"),
    case("eval_vae", "{vae}/best.pt --out {s}/e.txt", "--out {s}/e.txt: the name must end in .json"),
    case("eval_vae", "{vae}/best.pt --out {w}", "is a folder"),
    case("eval_vae", f"{{vae}}/best.pt --out {UNWRITABLE}/e.json", "cannot write there"),
    case("eval_vae", "{vae}/best.pt --device cuda --out {s}/e.json", "--device: no CUDA device is visible"),
    case("eval_vae", "{vae}/best.pt --device cuda0 --out {s}/e.json", "--device: got 'cuda0'; choose auto"),
    case("eval_vae", "{vae}/best.pt --figures {w}/notes.txt --out {s}/e.json", "--figures {w}/notes.txt"),
    case("eval_vae", "{vae}/best.pt --dataset folder --data-dir {w}/missing --out {s}/e.json", "does not exist"),
    case("eval_vae", "{vae}/best.pt --dataset folder --data-dir {w}/half --out {s}/e.json", "has train/ but no test/"),
    # ---- eval_diffusion
    case("eval_diffusion", "{ldm}/best.pt --out {s}/e.json", "this is a latent model"),
    case("eval_diffusion", "{vae}/best.pt --out {s}/e.json", "is not a diffusion checkpoint (kind 'vae')"),
    case("eval_diffusion", "{w}/truncated.pt --out {s}/e.json", "cannot read checkpoint"),
    case("eval_diffusion", "{ddpm}/best.pt --num-images 0 --out {s}/e.json", "--num-images must be >= 1"),
    case("eval_diffusion", "{ddpm}/best.pt --timesteps -1 --out {s}/e.json", "--timesteps must be >= 0"),
    case("eval_diffusion", "{ddpm}/best.pt --batch-size 0 --out {s}/e.json", "--batch-size must be >= 1"),
    case("eval_diffusion", "{ddpm}/best.pt --out {s}/e", "the name must end in .json"),
    case("eval_diffusion", "{ddpm}/best.pt --device cuda --out {s}/e.json", "--device: no CUDA device is visible"),
    case("eval_diffusion", "{ddpm}/best.pt --seed x --out {s}/e.json", "invalid int value"),
]


def make_world(root: Path) -> dict[str, str]:
    """Trained tiny runs and damaged files; returns the placeholders of CASES."""
    from PIL import Image

    places = {"w": str(root / "world"), "s": str(root / "scratch"), "vae": str(root / "world" / "vae"),
              "ddpm": str(root / "world" / "ddpm"), "ldm": str(root / "world" / "ldm")}
    w = Path(places["w"])
    w.mkdir(parents=True)
    Path(places["s"]).mkdir()
    for main, args in ((train_vae.main, [*VAE, "--save-dir", places["vae"]]),
                       (train_diffusion.main, [*DDPM, "--save-dir", places["ddpm"]]),
                       (train_diffusion.main, [*DDPM, "--save-dir", places["ldm"], "--latent", "--class-cond",
                                               "--vae-checkpoint", f"{places['vae']}/best.pt"])):
        main(args)
    good = (w / "ddpm" / "best.pt").read_bytes()
    (w / "notes.txt").write_text("not a checkpoint\n")
    (w / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    (w / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"payload": Case("x", (), "")}, w / "pickle.pt")       # needs code to unpickle
    torch.save({"weight": torch.zeros(3)}, w / "weights-only.pt")
    state = load_checkpoint(w / "ddpm" / "best.pt")
    state["config"]["unet"]["base_channels"] = 16                     # weights no longer fit
    torch.save(state, w / "mismatched.pt")
    (w / "broken.json").write_text("{not json")
    (w / "unknown.json").write_text(json.dumps({"colour": "blue"}))
    (w / "nan-lr.json").write_text('{"train": {"lr": NaN}}')
    (w / "list.json").write_text("[1, 2]")
    (w / "text-lr.json").write_text('{"train": {"lr": "fast"}}')
    (w / "string-epochs.toml").write_text('[train]\nepochs = "3"\n')
    (w / "empty").mkdir()
    image = Image.new("RGB", (16, 16), (200, 30, 30))
    for folder in ("half/train/a", "bad-image/a", "bad-image/b", "mixed/train/a", "mixed/test/b"):
        (w / folder).mkdir(parents=True)
        image.save(w / folder / "0.png")
    (w / "bad-image" / "b" / "1.png").write_bytes(b"not a png")
    return places


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return make_world(tmp_path_factory.mktemp("faults"))


def resolve(case_: Case, places: dict[str, str]) -> tuple[list[str], str]:
    fill = dict(places, VAE=" ".join(VAE), DDPM=" ".join(DDPM))
    args = " ".join(case_.args).format(**fill).split()
    return args, case_.expect.format(**fill)


def device_missing(case_: Case) -> bool:
    """False when the case names a device that this machine has (its error would not happen)."""
    if any(arg.startswith("cuda") for arg in case_.args) and torch.cuda.is_available():
        return False
    return not ("mps" in case_.args and torch.backends.mps.is_available())


def file_state(*folders: str) -> dict[str, str]:
    """Every file under `folders` with the SHA-1 of its bytes. Folders may appear, and so may a
    run folder's `.lock`: a training command claims its save dir before the work starts."""
    state = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and path.name != LOCK_NAME:
                state[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return state


@pytest.mark.parametrize("case_", CASES, ids=[c.id for c in CASES])
def test_user_mistake_is_one_line_without_traceback_and_touches_no_file(case_, world, capsys):
    if not device_missing(case_):
        pytest.skip("the case expects a machine without this device")
    args, expect = resolve(case_, world)
    capsys.readouterr()
    before = file_state(world["w"], world["s"])
    with pytest.raises(SystemExit) as exited:
        COMMANDS[case_.command](args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exited.value.code == case_.code, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert expect in lines[0], lines[0]
    assert file_state(world["w"], world["s"]) == before


def test_as_real_processes_the_scripts_give_the_same_one_line(world):
    picks = [c for c in CASES if c.args and c.args[0] in ("{VAE}", "{DDPM}")][::35] + \
            [c for c in CASES if c.command == "sample"][::13]
    scripts = {"train_vae": [ROOT / "diffusers" / "train_vae.py"],
               "train_diffusion": [ROOT / "diffusers" / "train_diffusion.py"],
               "sample": ["-m", "sdlab.cli.sample"]}
    for case_ in picks:
        if not device_missing(case_):
            continue
        args, expect = resolve(case_, world)
        result = run_script([*scripts[case_.command], *args], cwd=world["s"])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == case_.code and "Traceback" not in result.stderr, result.stderr
        assert len(lines) == 1 and expect in lines[0], (case_.id, result.stderr)


def test_disk_full_while_saving_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as exited:
        train_vae.main([*VAE, "--save-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]   # after progress bars
    assert exited.value.code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "cannot write" in errors[0] and "No space left on device" in errors[0]
    assert "nothing was written" in errors[0]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME, "config.json", "logs"]


def test_a_folder_that_refuses_writes_is_reported_before_any_work(tmp_path, capsys, monkeypatch):
    import sdlab.outputs

    def refuse(*args, **kwargs):     # what a read-only folder does (root ignores chmod, so fake it)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(sdlab.outputs.tempfile, "TemporaryFile", refuse)
    with pytest.raises(SystemExit) as exited:
        train_vae.main([*VAE, "--save-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1
    assert f"--save-dir {tmp_path / 'run'}: cannot write there (Permission denied)" in err


def test_a_latent_checkpoint_whose_carried_vae_was_edited_is_refused(world, tmp_path, capsys):
    state = load_checkpoint(Path(world["ldm"]) / "best.pt")
    weights = state["frozen"]["vae"]["weights"]
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(SystemExit) as exited:
        sample.main([str(tmp_path / "edited.pt"), "--out", str(tmp_path / "g.png"), "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "do not match their SHA-256" in err and len(err.splitlines()) == 1


def test_overwrite_starts_again_and_deletes_the_old_run(tmp_path, capsys):
    run = tmp_path / "run"
    train_vae.main([*VAE, "--save-dir", str(run)])
    old = load_checkpoint(run / "last.pt")["model"]
    train_vae.main([*VAE, "--save-dir", str(run), "--overwrite", "--seed", "1"])
    new = load_checkpoint(run / "last.pt")
    key = "encoder.conv_in.weight"
    assert new["epoch"] == 1 and not torch.equal(new["model"][key], old[key])


def train_until_done(args: list, save_dir: Path, kills: int, rng: random.Random,
                     max_delay: float = 0.3) -> list[float]:
    """Run a training command, SIGKILL it `kills` times at a random moment (up to `max_delay`
    seconds) after it has written a new checkpoint, resume it each time (`--resume`), and let the
    last run finish. After each kill last.pt must load.

    Returns the seconds of training each kill lost (kill time minus last.pt's write time)."""
    lost = []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    while True:
        resume = ["--resume"] if (save_dir / "last.pt").exists() else []
        proc = subprocess.Popen([sys.executable, *map(str, args), *resume], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
        if len(lost) == kills:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            return lost
        start = (save_dir / "last.pt").stat().st_mtime_ns if (save_dir / "last.pt").exists() else 0
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:    # wait for a new step checkpoint
            if (save_dir / "last.pt").exists() and (save_dir / "last.pt").stat().st_mtime_ns != start:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {proc.stderr.read()}")
        proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
        lost.append(killed_at - (save_dir / "last.pt").stat().st_mtime)
        assert load_checkpoint(save_dir / "last.pt")["step"] >= 1      # never corrupt


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(tmp_path):
    base = [ROOT / "diffusers" / "train_vae.py", "--dataset", "synthetic", "--synthetic-size", "240",
            "--imgsz", "16", "--batch", "16", "--epochs", "3", "--num-chans", "8", "--device", "cpu",
            "--precision", "fp32", "--save-every-steps", "2", "--ema-decay", "0.9"]
    reference = run_script([*base, "--save-dir", tmp_path / "reference"], cwd=tmp_path,
                           env={"OMP_NUM_THREADS": "1"})
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "killed"
    train_until_done([*base, "--save-dir", killed], killed, kills=3, rng=random.Random(0))
    expected, got = load_checkpoint(tmp_path / "reference" / "last.pt"), load_checkpoint(killed / "last.pt")
    assert got["step"] == expected["step"]
    for part in ("model", "ema"):
        for name, tensor in expected[part].items():
            assert torch.equal(got[part][name], tensor), (part, name)
    assert not list(killed.glob(".*.tmp*"))        # temporaries of killed writes are cleaned up


def test_a_saved_config_passed_back_never_resumes_or_overwrites_by_itself(tmp_path, capsys):
    run = tmp_path / "run"
    train_vae.main([*VAE, "--save-dir", str(run)])
    train_vae.main([*VAE, "--save-dir", str(run), "--overwrite"])
    stored = json.loads((run / "config.json").read_text())["train"]
    assert (stored["resume"], stored["overwrite"], stored["reset_schedule"]) == ("", False, False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        train_vae.main(["--config", str(run / "config.json")])
    assert exited.value.code == 2 and "already holds last.pt and best.pt" in capsys.readouterr().err


def test_a_second_run_into_a_folder_in_use_is_refused_with_the_holder(tmp_path):
    from sdlab.errors import UserError
    from sdlab.outputs import lock_dir

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sdlab.outputs import lock_dir; "
                               f"lock_dir({str(tmp_path)!r}, '--save-dir'); print('locked', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"is in use by process {holder.pid} on"):
            lock_dir(tmp_path, "--save-dir")
    finally:
        holder.kill()
        holder.wait()
    lock_dir(tmp_path, "--save-dir")     # a killed holder leaves no stale lock
    lock_dir(tmp_path, "--save-dir")     # and taking it again in one process is a no-op
