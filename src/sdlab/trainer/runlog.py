"""What a run reports: the console, LOG_DIR/train.log, TensorBoard scalars and history.json.

Only rank 0 writes. Train terms are averaged over a window of steps (`--log-every`) and over the
epoch; each term is weighted by its own count, since an update that starts later (a
discriminator after its warm-up) has no terms before it starts.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from ..distributed import Dist


class Means:
    """Running weighted means of named values: add({name: value}, weight), then means()."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, values: dict[str, float], weight: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}

    def __bool__(self) -> bool:
        return bool(self.sums)

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        if "sums" not in state:       # written when every term shared one count ("_count")
            state = dict(state)
            count = state.pop("_count", 0.0)
            state = {"sums": state, "counts": {k: count for k in state}}
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


class RunLog:
    """The run's log line writer and TensorBoard writer (open only inside `open()`, rank 0)."""

    def __init__(self, logs: Path, dist: Dist):
        self.logs, self.dist = logs, dist
        self.writer = None

    @contextmanager
    def open(self):
        from torch.utils.tensorboard import SummaryWriter

        if self.dist.is_main:
            self.writer = SummaryWriter(str(self.logs))
        try:
            yield self
        finally:
            if self.writer is not None:
                self.writer.close()

    def message(self, text: str) -> None:
        """Print `text` and append it to LOG_DIR/train.log (rank 0 only)."""
        if not self.dist.is_main:
            return
        tqdm.write(text)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "train.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def history(self, history: list[dict], save_dir: Path) -> None:
        if self.dist.is_main:
            (save_dir / "history.json").write_text(json.dumps(history, indent=1))
