"""One training loop for every model: fit, evaluate, early stopping, checkpoints, TensorBoard.

The model side supplies a loss function

    loss_fn(model, images, labels, generator=..., step=...) -> {"loss": scalar, "<term>": scalar}

that draws its random numbers (noise, timesteps, label dropout) from `generator`, a
`randomness.NoiseSource`. In training it draws from the trainer's noise generator (saved in
checkpoints) and `step` is the optimizer step (for warm-ups); in validation from a freshly
seeded generator with `step` None, so every epoch's validation loss sees the same noise and
timesteps and epochs compare. The trainer logs every term, train and val. A run with several
optimizers (an autoencoder and its discriminator) passes a list of `Update`s instead, one loss
function each.

On several processes (`distributed.Dist`, started by torchrun) each process takes its rows of
every global batch, gradients and the logged terms are averaged over all processes, and only
rank 0 writes files.

Nothing is lost: a checkpoint is written only when the loss, the validation terms and the
weights are finite; a signal, even during validation, stops with `last.pt` written; a save dir
that holds another run's checkpoints is never silently reused; `--resume` continues bitwise.

    config.py       TrainConfig, the flags every training command shares
    schedule.py     LRSchedule: warm-up, then step, cosine or plateau
    updates.py      Update (one optimizer: its parameters, loss, LR, start) and its live state
    stops.py        signals, --max-minutes, the agreement of processes; TrainingStopped
    selection.py    best.pt and early stopping by --select-by
    runlog.py       console, train.log, TensorBoard, history.json; running means
    checkpoints.py  the run folder and its lock, best.pt / last.pt, RNG states
    loop.py         Trainer: the loop that uses them
"""

from .checkpoints import CHECKPOINTS, prepare_run_dir
from .config import TrainConfig
from .loop import Trainer
from .schedule import LRSchedule
from .stops import TrainingStopped
from .updates import Update

__all__ = ["CHECKPOINTS", "LRSchedule", "TrainConfig", "Trainer", "TrainingStopped", "Update", "prepare_run_dir"]
