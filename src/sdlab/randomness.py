"""The random numbers a loss draws for one batch, independent of how the batch is split over
processes.

With data parallelism a global batch of `total` images is cut into per-process rows. If every
process drew its own noise, the noise an image gets would depend on the number of processes,
and two runs with the same global batch would train differently. A `NoiseSource` instead draws
every tensor for the whole global batch from a generator that is in the same state on every
process, and keeps this process's rows: image i of global batch k gets the same eps, t and
label-dropout coin whether one process or eight train. On one process the rows are the whole
batch and a draw is a plain draw from the generator.
"""

from __future__ import annotations

import torch


class NoiseSource:
    """Draws for rows [start, start + B) of a global batch of `total` rows (B: the local batch).

    Args:
        generator: the random stream (None: torch's global one); on several processes it must be
            in the same state on each.
        start: this process's first row in the global batch.
        total: rows in the global batch (None: the local batch, i.e. one process).
    """

    def __init__(self, generator: torch.Generator | None = None, start: int = 0, total: int | None = None):
        self.generator, self.start, self.total = generator, start, total

    @classmethod
    def of(cls, source: "NoiseSource | torch.Generator | None") -> "NoiseSource":
        """`source` as a NoiseSource (a generator or None draws for the local batch alone)."""
        return source if isinstance(source, NoiseSource) else cls(source)

    def _rows(self, drawn: torch.Tensor, local: int) -> torch.Tensor:
        return drawn[self.start:self.start + local]

    def _global(self, local: int) -> int:
        return local if self.total is None else self.total

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """eps ~ N(0, I) shaped (B, ...) like `like`, in its dtype, device and memory format."""
        shape = (self._global(like.shape[0]), *like.shape[1:])
        layout = torch.channels_last if like.dim() == 4 and like.is_contiguous(
            memory_format=torch.channels_last) and not like.is_contiguous() else torch.contiguous_format
        drawn = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)
        return self._rows(drawn.normal_(generator=self.generator), like.shape[0])

    def integers(self, high: int, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) int64 uniform on {0, ..., high - 1}."""
        drawn = torch.randint(0, high, (self._global(batch),), device=device, generator=self.generator)
        return self._rows(drawn, batch)

    def uniform(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) float32 uniform on [0, 1)."""
        return self._rows(torch.rand(self._global(batch), device=device, generator=self.generator), batch)
