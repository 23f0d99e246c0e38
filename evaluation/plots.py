"""Plots of ``vqldm evaluate``: code frequency, per-class code heatmap, image rows, FID vs steps.

Every figure is rendered to PNG in memory and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..plumbing.checkpoint import atomic_write_bytes
from ..plumbing.images import make_grid


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures render to PNG without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Render a matplotlib figure to PNG and write it atomically."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_code_frequency(counts: torch.Tensor, path: Path, title: str) -> Path:
    plt = pyplot()
    c = counts.double().sort(descending=True).values
    freq = c / c.sum().clamp(min=1)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(freq)), freq.numpy(), width=1.0, color="#3b6ea5")
    ax.set_yscale("log")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("share of latent positions")
    ax.set_xlim(-0.5, len(freq) - 0.5)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_class_heatmap(class_counts: torch.Tensor, class_names: list[str], path: Path, title: str) -> Path:
    """Rows: classes; columns: codes ordered by overall frequency; cell: the code's share of the class's positions."""
    plt = pyplot()
    counts = class_counts.double()
    order = counts.sum(dim=0).argsort(descending=True)
    used = int((counts.sum(dim=0) > 0).sum())
    share = counts[:, order[: max(used, 1)]] / counts.sum(dim=1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(class_names) + 1.6))
    im = ax.imshow(share.numpy(), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(class_names)))
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel(f"code (ordered by overall frequency; {used} used codes shown)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="share of class positions")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_image_rows(rows: list[tuple[str, torch.Tensor]], path: Path, nrow: int) -> Path:
    """Labelled image grids stacked vertically ([-1, 1] tensors)."""
    plt = pyplot()
    grids = [make_grid(imgs, nrow=nrow) for _, imgs in rows]
    width = 8.0
    heights = [width * g.height / g.width + 0.35 for g in grids]  # image aspect + room for the title
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (title, _), grid in zip(axes[:, 0], rows, grids):
        ax.imshow(grid, cmap="gray" if grid.mode == "L" else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_steps_sweep(rows: list[dict], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in dict.fromkeys(r["scheduler"] for r in rows):
        pts = sorted((r["steps"], r["fid"]) for r in rows if r["scheduler"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["steps"] for r in rows}))
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(plt.matplotlib.ticker.NullLocator())
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
