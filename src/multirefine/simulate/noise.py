"""Coloured noise for simulated stacks: the spectra ``--noise-spectrum`` names (a parametric
falloff, or a table per shell), as a shape of power per frequency."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from multirefine.errors import InputError

__all__ = ["check_noise_table", "noise_power_shape", "parse_falloff", "read_noise_spectrum", "spectrum_error"]


def spectrum_error(spec: str, what: str) -> InputError:
    return InputError(f"--noise-spectrum {spec}: {what}")


def parse_falloff(spec: str) -> tuple[float, float, float]:
    """``falloff:CORNER_A,FLOOR[,EXPONENT]`` -> (corner in Å, floor, exponent)."""
    try:
        values = [float(v) for v in spec.partition(":")[2].split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        values.append(1.0)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise spectrum_error(spec, "expected falloff:CORNER_A,FLOOR[,EXPONENT] (numbers)")
    corner, floor, exponent = values
    if corner <= 0 or floor < 0 or exponent <= 0:
        raise spectrum_error(spec, "expected CORNER_A > 0, FLOOR >= 0, EXPONENT > 0")
    return corner, floor, exponent


def check_noise_table(rows: list[list[float]], spec: str) -> None:
    widths = {len(r) for r in rows}
    if not rows or len(widths) != 1 or widths.pop() not in (1, 2):
        raise spectrum_error(spec, "expected one column (power per shell) or two (frequency in 1/Å, power)")
    table = np.asarray(rows, dtype=np.float64)
    power = table[:, -1]
    if not np.isfinite(table).all() or (power < 0).any() or power.max() <= 0:
        raise spectrum_error(spec, "expected finite powers >= 0, not all 0")
    if table.shape[1] == 2 and ((table[:, 0] < 0).any() or (np.diff(table[:, 0]) <= 0).any()):
        raise spectrum_error(spec, "expected frequencies >= 0 in increasing order")


def read_noise_spectrum(spec: str) -> list[list[float]]:
    """The rows of a spectrum file (``[]`` for ``white`` and ``falloff:...``, which are checked)."""
    if spec == "white":
        return []
    if spec.startswith("falloff:"):
        parse_falloff(spec)
        return []
    path = Path(spec)
    if not path.is_file():
        raise spectrum_error(
            spec, "expected white, falloff:CORNER_A,FLOOR[,EXPONENT] or a spectrum file (not found)"
        )
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#")[0].replace(",", " ").split()
        if not text:
            continue
        try:
            rows.append([float(v) for v in text])
        except ValueError:
            raise spectrum_error(spec, f"line {number}: expected numbers, got {line.strip()!r}") from None
    check_noise_table(rows, spec)
    return rows


def noise_power_shape(
    params, frequency_per_angstrom: np.ndarray, box_size: int
) -> np.ndarray:
    """Relative noise power at ``|k|`` (1/Å), any shape; the scale is set by the SNR.

    * ``white``: 1;
    * ``falloff:CORNER_A,FLOOR[,EXPONENT]``: ``1 / (1 + (|k| CORNER)^EXPONENT) + FLOOR``, a
      1/f-like fall (EXPONENT 1 by default) past the corner frequency 1/CORNER, on a floor;
    * a text file, ``#`` comments: one column is the power of shells 0, 1, 2, ... (``|k|`` in
      cycles per box of the simulated box; at least ``D/2 + 1`` rows), two columns are the
      frequency in 1/Å and the power; linear between rows, the end values beyond them.
    """
    k = np.asarray(frequency_per_angstrom, dtype=np.float64)
    spec = params.noise_spectrum
    if spec == "white":
        return np.ones_like(k)
    if spec.startswith("falloff:"):
        corner, floor, exponent = parse_falloff(spec)
        return 1.0 / (1.0 + (k * corner) ** exponent) + floor
    table = np.asarray(params.noise_spectrum_table, dtype=np.float64)
    if table.shape[1] == 2:
        return np.interp(k, table[:, 0], table[:, 1])
    shells = np.arange(len(table)) / (box_size * params.pixel_size_angstrom)
    return np.interp(k, shells, table[:, 0])
