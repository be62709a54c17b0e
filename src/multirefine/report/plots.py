"""Figures of a run: convergence over iterations, FSC curves, map sections and class
averages (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from multirefine.io.atomic import atomic_path

__all__ = [
    "plot_class_montage",
    "plot_convergence",
    "plot_directions",
    "plot_fsc",
    "plot_map_sections",
    "plot_model_count",
    "plot_noise_spectra",
]


def plot_convergence(stats: list[dict], path: str | Path) -> None:
    """Fraction of particles that changed model, resolution per model, per iteration."""
    it = [s["iteration"] for s in stats]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    changed = [np.nan if s["fraction_changed_model"] is None else 100 * s["fraction_changed_model"] for s in stats]
    axes[0].plot(it, changed, "o-")
    axes[0].set(xlabel="iteration", ylabel="particles that changed model (%)", ylim=(0, None))
    resolutions = np.array([s["resolution_0143_angstrom"] for s in stats], dtype=float)
    to_previous = np.array(
        [s["fsc_to_previous_0143_angstrom"] or [np.nan] * resolutions.shape[1] for s in stats], dtype=float
    )
    for m in range(resolutions.shape[1]):
        axes[1].plot(it, resolutions[:, m], "o-", label=f"model {m + 1}")
        axes[2].plot(it, to_previous[:, m], "o-", label=f"model {m + 1}")
    axes[1].set(xlabel="iteration", ylabel="half-map FSC 0.143 (Å)")
    axes[2].set(xlabel="iteration", ylabel="FSC 0.143 to previous map (Å)")
    for ax in axes[1:]:
        ax.invert_yaxis()
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def plot_model_count(count: dict, path: str | Path) -> None:
    """``--nmodels auto`` (``nmodels.json``): the cross-validated log-likelihood per particle
    against the number of models, and each step's gain beside the threshold a split must pass
    (kept: blue; refused: red; a step where no split left every model 50 particles: a cross
    at 0); the number chosen marked."""
    steps = count["steps"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    known = [s for s in steps if s["log_likelihood_per_particle"] is not None]
    axes[0].plot([s["models"] for s in known], [s["log_likelihood_per_particle"] for s in known], "o-")
    axes[0].axvline(count["chosen"], color="grey", lw=0.8, ls="--", label=f"chosen: {count['chosen']}")
    axes[0].set(xlabel="models", ylabel="cross-validated log-likelihood\nper particle")
    axes[0].legend()
    for s in steps[1:]:
        if s["gain_per_particle"] is None:
            axes[1].plot(s["models"], 0.0, "x", color="C3", ms=9)
        else:
            axes[1].plot(s["models"], s["gain_per_particle"], "o", color="C0" if s["kept"] else "C3", ms=8)
    axes[1].axhline(count["min_gain_per_particle"], color="grey", lw=0.8, ls="--", label="threshold")
    axes[1].set_yscale("symlog", linthresh=0.1)
    axes[1].margins(y=0.2)
    axes[1].set(xlabel="models", ylabel="gain of the split to it\nper particle")
    axes[1].legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max(s["models"] for s in steps) + 0.5)
    fig.tight_layout()
    _save(fig, path)


def plot_fsc(fsc: dict, path: str | Path, title: str = "", labels: list[str] | None = None) -> None:
    """Half-map FSC of every model against spatial frequency, with 0.143 and 0.5 marked, and
    (dotted) the FSC between every pair of models where ``fsc`` holds it (``mutual_fsc``):
    where two models' curve falls below their half-map curves, the maps differ."""
    freq = np.asarray(fsc["shell_frequency_per_angstrom"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m, curve in enumerate(fsc["half_map_fsc"]):
        ax.plot(freq[1:], np.asarray(curve)[1:], label=labels[m] if labels else f"model {m + 1}")
    mutual = np.asarray(fsc.get("mutual_fsc", []))
    for i in range(len(mutual)):
        for j in range(i + 1, len(mutual)):
            names = (labels[i], labels[j]) if labels else (f"model {i + 1}", f"{j + 1}")
            ax.plot(freq[1:], mutual[i, j, 1:], ls=":", lw=1.2, label=f"{names[0]} vs {names[1]}")
    for level in (0.5, 0.143):
        ax.axhline(level, color="grey", lw=0.7, ls="--")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC" if len(mutual) > 1 else "FSC (half maps)", ylim=(-0.1, 1.05),
           title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def plot_noise_spectra(noise: dict, path: str | Path) -> None:
    """Noise power per shell of each optics group (``noise.json``), on a log scale."""
    power = np.asarray(noise["power_per_shell"])
    box = 2 * (power.shape[1] - 1)
    freq = np.arange(power.shape[1]) / (box * noise.get("pixel_size_angstrom", 1.0))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for group, curve in zip(noise["optics_groups"], power):
        ax.semilogy(freq[1:], curve[1:], label=f"optics group {group}")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="noise power (relative)", title="noise spectra")
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def plot_map_sections(maps: list[np.ndarray], labels: list[str], path: str | Path,
                      masks: list[np.ndarray | None] | None = None) -> None:
    """One row per map ``(D, D, D)``: its central sections (z, y, x) and its projections
    along the same axes, each panel scaled to its own range; where ``masks`` gives the map's
    solvent mask, its 0.5 contour over the sections and its outline over the projections (red)."""
    fig, axes = plt.subplots(len(maps), 6, figsize=(10, 1.8 * len(maps) + 0.4), squeeze=False)
    titles = ("section z", "section y", "section x", "projection z", "projection y", "projection x")
    for row, (volume, label) in enumerate(zip(maps, labels)):
        c = volume.shape[0] // 2
        panels = (volume[c], volume[:, c], volume[:, :, c], volume.sum(0), volume.sum(1), volume.sum(2))
        mask = None if masks is None else masks[row]
        outlines = None if mask is None else (mask[c], mask[:, c], mask[:, :, c], mask.max(0), mask.max(1), mask.max(2))
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap="gray", origin="lower")
            if outlines is not None and outlines[col].min() < 0.5 < outlines[col].max():
                ax.contour(outlines[col], levels=[0.5], colors="red", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_class_montage(averages: np.ndarray, labels: list[str], path: str | Path, columns: int = 8) -> None:
    """Class averages ``(C, D, D)`` in a grid, each scaled to its own range, with its label.

    One image on one axes (the tiles laid out here): a figure of many axes costs the run
    about half a second per iteration, this one a tenth of that."""
    count, box = len(averages), averages.shape[-1]
    rows = max(1, -(-count // columns))
    gap, head = max(1, box // 16), max(6, box // 4)  # between tiles; above each, room for its label
    cell_w, cell_h = box + gap, box + head
    canvas = np.full((rows * cell_h, columns * cell_w - gap), np.nan, dtype=np.float32)
    for i, image in enumerate(averages):
        low, high = np.percentile(image, (0.5, 99.5))
        r, c = divmod(i, columns)
        top, left = r * cell_h + head, c * cell_w
        canvas[top : top + box, left : left + box] = np.clip((image - low) / max(high - low, 1e-12), 0, 1)[::-1]
    fig = plt.figure(figsize=(1.3 * columns, 1.45 * rows))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.ma.masked_invalid(canvas), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_facecolor("white")
    ax.axis("off")
    for i, label in enumerate(labels[:count]):
        r, c = divmod(i, columns)
        ax.text(c * cell_w + box / 2, r * cell_h + head - 1, label, ha="center", va="bottom", fontsize=7)
    _save(fig, path)


def plot_directions(directions: list[tuple[np.ndarray, np.ndarray, np.ndarray]], labels: list[str],
                    path: str | Path) -> None:
    """Particles per viewing direction, one equal-area (Mollweide) map of the sphere per
    model, titled by ``labels``: ``directions[m]`` = (rot °, tilt °, particles) of each
    direction; rot across, 90° - tilt up, so the top is tilt 0 and the bottom tilt 180 (what
    the data lack shows as an empty region)."""
    columns = min(len(directions), 4)
    rows = -(-len(directions) // columns)
    fig = plt.figure(figsize=(4.2 * columns, 2.9 * rows))
    for i, ((rot, tilt, count), label) in enumerate(zip(directions, labels)):
        ax = fig.add_subplot(rows, columns, i + 1, projection="mollweide")
        order = np.argsort(count, kind="stable")  # the fullest directions drawn last, on top
        points = ax.scatter(np.radians(rot[order]), np.radians(90.0 - tilt[order]), c=count[order], s=9,
                            cmap="viridis", vmin=0, linewidths=0)
        ax.set_title(label, fontsize=8, pad=10)
        ax.set_xticklabels([])
        latitudes = np.array([60, 30, 0, -30, -60])
        ax.set_yticks(np.radians(latitudes))
        ax.set_yticklabels([f"tilt {90 - v}°" for v in latitudes])
        ax.tick_params(labelsize=6)
        ax.grid(True, lw=0.3)
        fig.colorbar(points, ax=ax, orientation="horizontal", fraction=0.05, pad=0.06).ax.tick_params(labelsize=6)
    _save(fig, path)
