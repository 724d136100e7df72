"""When a run stops: signals, the --max-minutes deadline, and the agreement of all processes.

A SIGINT/SIGTERM only sets a flag; the loop acts on it between batches, after every process has
agreed (one all-reduce that also carries the batch's loss terms), so all processes of a job stop
at the same step with one checkpoint.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager

import torch

from ..distributed import Dist
from ..errors import UserError


class TrainingStopped(UserError):
    """Training ended early and abnormally (signal or non-finite values); the message says why.
    All processes of a job stop together (the decision is agreed), so only rank 0 reports it."""

    agreed = True

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopAgreement:
    """The signal this process received, and what all processes agreed at the last `agree`."""

    def __init__(self, dist: Dist, device: torch.device):
        self.dist, self.device = dist, device
        self.received: int | None = None     # a signal this process received
        self.signal: int | None = None       # one that some process received (agreed by all)
        self.time_up = False                 # --max-minutes used up on some process (agreed)
        self.deadline = math.inf

    @contextmanager
    def handling_signals(self, max_minutes: float):
        """Catch SIGINT/SIGTERM (main thread only) and start the --max-minutes clock."""
        self.deadline = time.monotonic() + 60 * max_minutes if max_minutes else math.inf
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, lambda signum, _frame: self.request(signum))
                        for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def request(self, signum: int) -> None:
        self.received = signum

    def agree(self, terms: dict | None = None, count: int = 0) -> dict[str, float]:
        """Agree with the other processes (one all-reduce): returns each term's mean over the
        global batch (`count` images here), and sets `signal` and `time_up` when any process
        received a signal or reached --max-minutes. A non-finite term anywhere makes the mean
        non-finite everywhere, so all processes stop on it together."""
        names = list(terms or {})
        flags = torch.tensor([count, self.received == signal.SIGINT, self.received == signal.SIGTERM,
                              time.monotonic() >= self.deadline], dtype=torch.float64, device=self.device)
        if names:
            sums = torch.stack([terms[k].detach().double() for k in names]) * count
            flags = torch.cat([sums, flags])
        *sums, total, sigint, sigterm, late = self.dist.sum(flags).tolist()
        self.signal = signal.SIGINT if sigint else signal.SIGTERM if sigterm else None
        self.time_up = late > 0
        return {k: v / total for k, v in zip(names, sums)}
