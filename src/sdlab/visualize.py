"""Image grids and plots, written as PNG files (matplotlib's Agg backend; never a window).

Images come in as float tensors in [-1, 1]; this module and `data` are the only converters.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> one (3, H', W') image in [0, 1]."""
    from torchvision.utils import make_grid  # imported on use: torchvision takes seconds to import

    images = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save (B, C, H, W) images in [-1, 1] as one PNG grid with `nrow` images per row."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid(images, nrow), path)
    return path


def save_labelled_rows(rows: Sequence[torch.Tensor], labels: Sequence[str], path: str | Path,
                       title: str = "", columns: Sequence[str] | None = None) -> Path:
    """Stack rows of images (each (N, C, H, W) in [-1, 1]) with a label left of each row and,
    optionally, one above each column."""
    label_inches = 0.075 * max(len(line) for label in labels for line in str(label).split("\n"))
    fig, axes = plt.subplots(len(rows), 1, squeeze=False,
                             figsize=(1.0 * max(r.shape[0] for r in rows) + label_inches, 1.15 * len(rows)))
    for i, (ax, row, label) in enumerate(zip(axes[:, 0], rows, labels)):
        ax.imshow(grid(row, nrow=row.shape[0]).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([])
        if columns is not None and i == 0:
            side = row.shape[-1] + 2            # `grid`'s padding is 2
            ax.set_xticks([2 + k * side + row.shape[-1] / 2 for k in range(len(columns))], list(columns), fontsize=8)
            ax.xaxis.set_ticks_position("top")
            ax.tick_params(length=0)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_history(history: list[dict], path: str | Path, terms: Sequence[str] | None = None,
                 title: str = "") -> Path:
    """Loss curves from a trainer history: one panel per term, train and val against epoch.

    A panel uses a log scale when its values are positive and span more than a factor of 10.
    """
    if not history:
        raise ValueError("plot_history: the history is empty (train at least one epoch)")
    keys = [k for k in history[-1] if "/" in k]
    terms = list(terms) if terms else sorted({k.split("/", 1)[1] for k in keys},
                                             key=lambda t: (t != "loss", t))
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
    epochs = [r["epoch"] for r in history]
    for ax, term in zip(axes[0], terms):
        values = []
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}/{term}") for r in history]
            if all(y is None for y in ys):
                continue
            ax.plot(epochs, ys, style, label=split, markersize=3)
            values += [y for y in ys if y is not None]
        if values and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.set_title(term)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_bars(names: Sequence[str], values: Sequence[float], path: str | Path, ylabel: str,
              title: str = "") -> Path:
    """A bar chart, e.g. KL per latent channel or loss per timestep bucket."""
    return plot_bar_panels([(names, values, ylabel, title)], path)


def plot_bar_panels(panels: Sequence[tuple[Sequence[str], Sequence[float], str, str]], path: str | Path,
                    title: str = "") -> Path:
    """Bar charts side by side, one per (names, values, y label, panel title): quantities in
    different units each get their own axis."""
    widths = [max(4, 0.5 * len(names) + 2) for names, *_ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 3.2), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (names, values, ylabel, panel_title) in zip(axes[0], panels):
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), names, rotation=45 if len(names) > 8 else 0, ha="right"
                      if len(names) > 8 else "center")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_lines(x: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, xlabel: str,
               title: str = "", right: dict[str, Sequence[float]] | None = None, log_x: bool = False,
               ylabel: str = "", log_y: bool = False, caption: str = "") -> Path:
    """Curves sharing one x axis: `series` on the left y axis, `right` (e.g. an accuracy in
    [0, 1]) on a second axis; each axis is labelled with its series' names. A series given as
    a tuple (xs, ys) has x values of its own (e.g. a metric against NFE for several samplers).
    `caption`: small text under the axes (e.g. the command that made the figure)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, values in series.items():
        xs, ys = values if isinstance(values, tuple) else (x, values)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or ", ".join(series))
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        twin = ax.twinx()
        for name, values in right.items():
            twin.plot(x, values, marker="s", linestyle="--", color="tab:red", label=name)
        twin.set_ylabel(", ".join(right))
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8)
    ax.set_title(title)
    if caption:
        fig.text(0.01, -0.02, textwrap.fill(caption, 100), fontsize=6, va="top", family="monospace")
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")    # "tight": long row labels are not cut off
    plt.close(fig)
    return path
