"""The run folder's records: dataclasses that read and write their JSON.

``convergence.json`` is a list of :class:`IterationStats` (one per multi-model iteration;
``model_MM/convergence.json`` a list of :class:`SingleStats`), ``fsc_II.json`` an
:class:`FscRecord`, and an iteration's split and merge trial a :class:`SplitMergeTrial`
inside its :class:`IterationStats`. Written with :func:`write_json` (atomically), read with
``from_json``; the report reads the same files as plain JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from multirefine.errors import InputError
from multirefine.runfolder.names import write_json

__all__ = ["FscRecord", "IterationStats", "SingleStats", "SplitMergeTrial", "read_convergence", "write_convergence"]


@dataclass
class SplitMergeTrial:
    """A split and merge trial (models from 1): the model dissolved, the one split, the
    cross-validated log-likelihood gained, and whether the trial was kept."""

    dissolved: int
    split: int
    gain: float
    kept: bool


@dataclass
class IterationStats:
    """One multi-model iteration, as ``convergence.json`` holds it."""

    iteration: int
    seconds: float
    band_resolution_angstrom: float
    coarse_step_deg: float
    fine_step_deg: float
    particles_per_model: list[int]
    fraction_changed_model: float | None
    resolution_0143_angstrom: list[float]
    fsc_to_previous_0143_angstrom: list[float] | None
    mean_score: float
    # The particles each map was made from (weights summed) after the --m3dkeep cut; None in
    # convergence.json files written before this field existed.
    particles_in_maps: list[float] | None = None
    split_merge: SplitMergeTrial | None = None  # None where none was tried
    junk_particles: int | None = None  # --junk: the particles in no map (None: before the option existed)

    @classmethod
    def from_json(cls, data: dict) -> IterationStats:
        trial = data.get("split_merge")
        return cls(**{**data, "split_merge": None if trial is None else SplitMergeTrial(**trial)})


@dataclass
class SingleStats:
    """One iteration of a model's refinement on its own (``model_MM/convergence.json``)."""

    iteration: int
    seconds: float
    band_resolution_angstrom: float
    coarse_step_deg: float
    fine_step_deg: float
    particles: int
    resolution_0143_angstrom: float
    median_rotation_change_deg: float | None  # from the previous iteration, symmetry mates counted as one
    mean_score: float

    @classmethod
    def from_json(cls, data: dict) -> SingleStats:
        return cls(**data)


def write_convergence(path: str | Path, stats: list) -> None:
    """``convergence.json``: the records of every iteration so far."""
    write_json(path, [asdict(s) for s in stats])


def read_convergence(path: str | Path, record: type = IterationStats) -> list:
    """The records of ``convergence.json`` (``record``: :class:`IterationStats` or :class:`SingleStats`);
    InputError where it is missing or damaged."""
    try:
        return [record.from_json(s) for s in json.loads(Path(path).read_text())]
    except FileNotFoundError:
        raise InputError(f"{path}: not found; not a run folder, or no iteration has finished") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"{path}: damaged, not readable ({exc})") from None


@dataclass
class FscRecord:
    """``fsc_II.json``: the half-map FSC of every model (and their mutual FSC) per shell."""

    pixel_size_angstrom: float
    shell_frequency_per_angstrom: list[float]
    half_map_fsc: list[list[float]]
    mutual_fsc: list | None = None  # (K, K, shells); not in a model's own refinement

    @classmethod
    def of(cls, box: int, apix: float, curves: list[np.ndarray], mutual: np.ndarray | None = None) -> FscRecord:
        return cls(apix, (np.arange(box // 2 + 1) / (box * apix)).tolist(), [c.tolist() for c in curves],
                   None if mutual is None else mutual.tolist())

    def to_json(self) -> dict:
        data = asdict(self)
        if data["mutual_fsc"] is None:
            del data["mutual_fsc"]
        return data

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json())
