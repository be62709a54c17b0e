"""Figures of a run: convergence over iterations and FSC curves (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from multirefine.io.atomic import atomic_path  # noqa: E402

__all__ = ["plot_convergence", "plot_fsc"]


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


def plot_fsc(fsc: dict, path: str | Path, title: str = "") -> None:
    """Half-map FSC of every model against spatial frequency, with 0.143 and 0.5 marked."""
    freq = np.asarray(fsc["shell_frequency_per_angstrom"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m, curve in enumerate(fsc["half_map_fsc"]):
        ax.plot(freq[1:], np.asarray(curve)[1:], label=f"model {m + 1}")
    for level in (0.5, 0.143):
        ax.axhline(level, color="grey", lw=0.7, ls="--")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC (half maps)", ylim=(-0.1, 1.05), title=title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
