"""The run folder's file names (a contract, documented in the README).

``threed_00_MM.mrc`` are the starting maps, ``threed_II_MM.mrc`` the maps after
iteration ``II`` (``MM`` = model = ``rlnClassNumber``, from 01), ``particles_II.star``
every input particle with its assignment, ``classes_II.mrcs`` the class averages
(``classes_II.star``: model, direction and size of each), ``fsc_II.json`` and
``fsc_II.png`` the FSC curves, ``convergence.json`` and ``convergence.png`` the
per-iteration statistics, ``0_refine_parms.json`` every resolved
option, ``state.npz`` what ``--continue`` needs (rewritten after every iteration),
``particles_model_MM.star`` the final particle set of each model, and
``model_MM/`` that set's refinement on its own (:mod:`multirefine.runfolder.writer` lists
its files).
Every file is written under a temporary name and renamed, so an interrupted run leaves
only complete files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from multirefine.errors import InputError
from multirefine.io.atomic import atomic_path

__all__ = [
    "CONSENSUS",
    "CONVERGENCE",
    "CONVERGENCE_FIGURE",
    "JUNK_PARTICLES",
    "MODEL_FINISHED",
    "NOISE",
    "PARAMETERS",
    "POSES_MOVED",
    "STATE",
    "classes_name",
    "classes_table_name",
    "fsc_figure_name",
    "fsc_name",
    "joined_particles_name",
    "map_name",
    "model_folder_name",
    "model_lst_name",
    "model_particles_name",
    "next_free_path",
    "particles_iterations",
    "particles_name",
    "read_json",
    "write_json",
]

PARAMETERS = "0_refine_parms.json"
CONVERGENCE = "convergence.json"
CONVERGENCE_FIGURE = "convergence.png"
CONSENSUS = "consensus"  # --consensus: all particles refined against one map first, its files as model_MM/'s
JUNK_PARTICLES = "particles_junk.star"  # --junk: the last assignment's particles in no map (rlnClassNumber 0)
NOISE = "noise.json"  # the noise model: power per Fourier shell of each optics group (--noise coloured)
CLASS_PARTICLES = "mrParticleCount"  # classes_II.star: the particles (weights) in each class average
STATE = "state.npz"  # what --continue reads: the run after its last finished iteration
MASKED_FSC = "fsc_masked.json"  # in model_MM/, with --mask: the final half maps' FSC within it, solvent-corrected
# in model_MM/: how far its particles' poses moved from the classification's (multirefine.refine.posecheck)
POSES_MOVED = "poses_moved.json"
MODEL_FINISHED = "finished.json"  # in model_MM/, written last: that model's own refinement is complete


def next_free_path(parent: str | Path = ".", prefix: str = "multi") -> Path:
    """The first ``multi_NN`` (NN from 01) that does not exist in ``parent``, as EMAN2 does."""
    parent = Path(parent)
    used = {
        int(m.group(1))
        for p in parent.glob(f"{prefix}_*")
        if (m := re.fullmatch(rf"{prefix}_(\d+)", p.name))
    }
    n = 1
    while n in used:
        n += 1
    return parent / f"{prefix}_{n:02d}"


def map_name(iteration: int, model: int) -> str:
    return f"threed_{iteration:02d}_{model:02d}.mrc"


def particles_name(iteration: int) -> str:
    return f"particles_{iteration:02d}.star"


def particles_iterations(run: str | Path) -> list[int]:
    """The iterations whose :func:`particles_name` table the run folder holds, in order."""
    return sorted(
        int(m.group(1)) for p in Path(run).iterdir() if (m := re.fullmatch(r"particles_(\d+)\.star", p.name))
    )


def fsc_name(iteration: int) -> str:
    return f"fsc_{iteration:02d}.json"


def classes_name(iteration: int) -> str:
    return f"classes_{iteration:02d}.mrcs"


def classes_table_name(iteration: int) -> str:
    return f"classes_{iteration:02d}.star"


def fsc_figure_name(iteration: int) -> str:
    return f"fsc_{iteration:02d}.png"


def model_particles_name(model: int) -> str:
    return f"particles_model_{model:02d}.star"


def model_lst_name(model: int) -> str:
    """``--lst``: a model's particles as an EMAN2 list, beside its STAR file."""
    return f"particles_model_{model:02d}.lst"


def joined_particles_name(models: list[int]) -> str:
    """The particles of several models in one file (``multirefine split --join``)."""
    return "particles_models_" + "_".join(f"{m:02d}" for m in models) + ".star"


SUBTRACTED = "subtracted"  # --write-subtracted: particles_subtracted.star and .mrcs (the focus region's signal)
FOCUS_MASK = "focusmask.mrc"  # the run's copy of --focusmask on the particles' grid (what --continue reads)
NMODELS = "nmodels.json"  # --nmodels auto: the count (multirefine.refine.growth.ModelCount.to_json)
NMODELS_FIGURE = "nmodels.png"  # its curve, in the report


def mask_name(model: int) -> str:
    """The run's copy of model ``model``'s ``--mask`` on the particles' grid (what ``--continue`` reads)."""
    return f"mask_{model:02d}.mrc"


def model_folder_name(model: int) -> str:
    return f"model_{model:02d}"


def read_json(path: str | Path) -> Any:
    """A JSON file of a run folder; InputError naming it where it is cut short or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: damaged, not readable ({exc})") from None


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
