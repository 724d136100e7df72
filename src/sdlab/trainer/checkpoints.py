"""A run's folder and its checkpoint files: the run lock, best.pt / last.pt, RNG states.

Checkpoints (`last.pt` each epoch and every `save_every_steps` steps, `best.pt` on improvement)
hold everything needed to continue exactly (see `Trainer.state_dict`). A save dir that holds
another run's checkpoints is never silently reused, and a failed write leaves the previous file
intact (`save_checkpoint` renames a complete temporary over it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import CheckpointError, remove_stale_temporaries, save_checkpoint
from ..distributed import Dist
from ..errors import UserError
from ..outputs import lock_dir, writable_dir
from .config import TrainConfig

CHECKPOINTS = ("last.pt", "best.pt")


def prepare_run_dir(cfg: TrainConfig) -> Path | None:
    """Check the save and log dirs before any work; returns the checkpoint to resume from.

    Both folders must be writable, and the save dir is locked for this process (`lock_dir`: a
    second run into it is refused). Leftover temporaries of a killed checkpoint write are
    removed. Without `resume`, a save dir that already holds checkpoints is refused unless
    `overwrite` is set, which deletes them (and history.json) so nothing of the old run mixes
    with the new one. Raises UserError naming the flag and the fix.
    """
    save_dir = writable_dir(cfg.save_dir, "--save-dir")
    writable_dir(cfg.logs, "--log-dir")
    lock_dir(save_dir, "--save-dir")
    remove_stale_temporaries(save_dir)
    if cfg.resume:
        path = save_dir / "last.pt" if cfg.resume == "last" else Path(cfg.resume)
        if not path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {path}; drop --resume to start a new run")
        return path
    found = [name for name in CHECKPOINTS if (save_dir / name).exists()]
    if found and not cfg.overwrite:
        raise UserError(f"--save-dir {save_dir} already holds {' and '.join(found)} of an earlier run: "
                        "add --resume to continue it, or --overwrite to start again (deletes them)")
    for name in (*found, "history.json"):
        (save_dir / name).unlink(missing_ok=True)
    return None


def write_checkpoints(state: dict, save_dir: Path, best: bool) -> None:
    """Write best.pt (when `best`) and then last.pt; a failed write names the file and the fix.

    best.pt goes first: a kill between the two leaves last.pt one epoch behind, and the
    resumed run redoes that epoch and writes best.pt again.
    """
    for path in ([save_dir / "best.pt"] if best else []) + [save_dir / "last.pt"]:
        existed = path.exists()
        try:
            save_checkpoint(state, path)
        except OSError as err:
            kept = f"the previous {path.name} is intact" if existed else "nothing was written"
            again = "with --resume" if (save_dir / "last.pt").exists() else "with --overwrite"
            raise UserError(f"cannot write {path} ({err.strerror or err}); {kept}. Free disk space "
                            f"or fix the folder, then run the command again {again}") from None


def dropout_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s own stream (dropout) in a data-parallel job."""
    return seed + 1_000_003 * (rank + 1)


def rng_state(dist: Dist, noise: torch.Generator) -> dict:
    """This run's RNG states: {"rng": rank 0's torch states + the loss's noise generator,
    "rank_rng": every process's torch states (several processes only)}. Every process calls it."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    ranks = dist.gather(rng)
    return {"rng": dict(rng, noise=noise.get_state()), **({"rank_rng": ranks} if dist.world > 1 else {})}


def restore_rng(state: dict, dist: Dist, noise: torch.Generator, seed: int, step: int) -> list[str]:
    """Set this process's RNG states from a checkpoint; returns a note when they cannot be restored."""
    rng, notes = state["rng"], []
    ranks = state.get("rank_rng")
    if dist.world > 1:
        if ranks is not None and len(ranks) == dist.world:
            rng = dict(rng, **ranks[dist.rank])
        else:   # a checkpoint of another world size: the dropout streams start afresh
            rng = {"cpu": torch.manual_seed(dropout_seed(seed, dist.rank) + step).get_state()}
            notes.append(f"written by {len(ranks) if ranks else 1} process(es), resumed on {dist.world}: "
                         "the loss's noise continues exactly, each process's dropout stream starts afresh")
    torch.set_rng_state(rng["cpu"].cpu())      # RNG states are CPU byte tensors
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    if "noise" in rng:
        noise.set_state(rng["noise"].cpu())
    else:                       # written before the loss had its own generator
        noise.manual_seed(seed + step)
    return notes
