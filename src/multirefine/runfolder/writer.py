"""The run folder's writers: what the engine hands over, as the files the README lists.

:class:`RunWriter` is the command line's recorder of the multi-model iterations
(:class:`multirefine.refine.driver.Recorder`): per iteration ``threed_II_MM.mrc``,
``particles_II.star``, ``classes_II.mrcs`` / ``.star``, ``fsc_II.json``,
``convergence.json``, then whatever ``after`` adds (the command line: figures and the
report), and last ``state.npz``, so that a run killed meanwhile goes on from the iteration
before. :class:`ModelFolder` is the same for each model's refinement on its own, in
``model_MM/``: ``threed_00.mrc`` the starting map (low-passed; the mean of the two when each
half-set has its own), ``threed_II.mrc`` the full map after iteration ``II``,
``fsc_II.json``, ``convergence.json``; at the end ``threed_final.mrc`` (the full map,
FSC-weighted and masked), ``half1_unfil.mrc`` / ``half2_unfil.mrc`` (the last half maps,
neither filtered nor masked: for ``relion_postprocess`` or any other sharpening) and
``particles_final.star`` (the set with its final poses), and last ``finished.json``: after
which multi-model iteration, with how many particles and which ``--singleiter`` and
``--singleres`` the model was refined (:meth:`ModelFolder.earlier` takes such a model
up again on ``--continue``). Every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from multirefine.io.atomic import atomic_path
from multirefine.io.eman2 import write_lst
from multirefine.io.maps import write_map, write_stack
from multirefine.io.star import write_particles_star
from multirefine.runfolder import names
from multirefine.runfolder.records import (
    FscRecord,
    SingleStats,
    read_convergence,
    write_convergence,
)
from multirefine.runfolder.state import save_state

__all__ = ["ModelFolder", "RunWriter"]

log = logging.getLogger(__name__)

# What a model's own refinement writes into its folder (and nothing else there): FINISHED
# first, so that a folder cleared only in part is never taken for a finished one.
_MODEL_OUTPUTS = re.compile(r"threed_\d+\.mrc|fsc_\d+\.json|convergence\.json|threed_final\.mrc|half[12]_unfil\.mrc"
                            r"|particles_final\.star|poses_moved\.json")


ImageFilesFor = Callable[[Path], Mapping[str, str]]


class RunWriter:
    """Writes a run's iterations into ``path`` (see the module docstring). ``written_maps``
    turns the maps into the maps written (``--mass``: normalised by it); ``after`` is called
    with the run folder and the iteration once its files are written, before the state.
    ``image_files``: a folder -> how STAR files there name the image files
    (:meth:`multirefine.io.particles.ParticleStack.image_files_for`; None: as in the table)."""

    def __init__(self, path: str | Path, pixel_size: float, optics: pd.DataFrame | None, n_models: int,
                 written_maps: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
                 after: Callable[[Path, int], None] | None = None,
                 image_files: ImageFilesFor | None = None, lst: bool = False) -> None:
        self.path, self.pixel_size, self.optics, self.n_models = Path(path), pixel_size, optics, n_models
        self.lst = lst  # --lst: each model's particles also as an EMAN2 list
        self.written_maps = written_maps or (lambda maps: maps)
        self.after = after
        self._image_files = _ImageFiles(image_files, self.path)

    def _write_particles(self, path: Path, table: pd.DataFrame) -> None:
        write_particles_star(path, table, self.optics, image_files=self._image_files())

    def start(self, maps: list[np.ndarray], noise: dict | None = None) -> None:
        """The starting maps (``threed_00_MM.mrc``) and the noise model (``noise.json``)."""
        for m_index, volume in enumerate(maps, start=1):
            write_map(self.path / names.map_name(0, m_index), volume, self.pixel_size)
        if noise is not None:
            names.write_json(self.path / names.NOISE, noise)

    def iteration(self, record) -> None:
        """``record``: a :class:`multirefine.refine.driver.IterationRecord`."""
        out, iteration = self.path, record.iteration
        for m_index, volume in enumerate(self.written_maps(record.maps), start=1):
            write_map(out / names.map_name(iteration, m_index), volume, self.pixel_size)
        self._write_particles(out / names.particles_name(iteration), record.table)
        write_stack(out / names.classes_name(iteration), record.class_averages, self.pixel_size)
        classes = record.class_table.assign(  # row i is image i + 1 of classes_II.mrcs (relion_display)
            rlnReferenceImage=[f"{i}@{names.classes_name(iteration)}" for i in range(1, len(record.class_table) + 1)])
        with atomic_path(out / names.classes_table_name(iteration)) as tmp:
            starfile.write({"classes": classes}, tmp, overwrite=True)
        record.fsc.write(out / names.fsc_name(iteration))
        write_convergence(out / names.CONVERGENCE, record.stats)
        if self.after is not None:
            self.after(out, iteration)
        save_state(out / names.STATE, record.state)

    def finish(self, table: pd.DataFrame) -> None:
        """Each model's particles of the last assignment, ``particles_model_MM.star`` (and with
        ``--lst`` ``particles_model_MM.lst``, EMAN2's list of the same images), and the
        particles in no map (``--junk``: ``rlnClassNumber`` 0), ``particles_junk.star``; where
        there are none, an earlier attempt's junk file is removed."""
        classes = table["rlnClassNumber"].to_numpy()
        for m_index in range(1, self.n_models + 1):
            self._write_particles(self.path / names.model_particles_name(m_index), table[classes == m_index])
            if self.lst:
                write_lst(self.path / names.model_lst_name(m_index), table["rlnImageName"][classes == m_index],
                          self._image_files())
        junk = self.path / names.JUNK_PARTICLES
        if (classes == 0).any():
            self._write_particles(junk, table[classes == 0])
        else:
            junk.unlink(missing_ok=True)


class _ImageFiles:
    """The image file names for STAR files in one folder, worked out once, when first written."""

    def __init__(self, image_files: ImageFilesFor | None, folder: Path) -> None:
        self._for, self._folder, self._names = image_files, folder, None

    def __call__(self) -> Mapping[str, str] | None:
        if self._for is not None and self._names is None:
            self._names = self._for(self._folder)
        return self._names


class ModelFolder:
    """Writes one model's refinement on its own into ``model_MM/`` (see the module docstring)."""

    def __init__(self, folder: str | Path, pixel_size: float, optics: pd.DataFrame | None,
                 written_map: Callable[[np.ndarray], np.ndarray] | None = None,
                 image_files: ImageFilesFor | None = None) -> None:
        self.folder, self.pixel_size, self.optics = Path(folder), pixel_size, optics
        self.written_map = written_map or (lambda volume: volume)
        self._image_files = _ImageFiles(image_files, self.folder)
        self.stats: list[SingleStats] = []

    def start(self, volume: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_map(self.folder / "threed_00.mrc", volume, self.pixel_size)

    def iteration(self, stat: SingleStats, full_map: np.ndarray, fsc: FscRecord) -> None:
        self.stats.append(stat)
        write_map(self.folder / f"threed_{stat.iteration:02d}.mrc", self.written_map(full_map), self.pixel_size)
        fsc.write(self.folder / f"fsc_{stat.iteration:02d}.json")
        write_convergence(self.folder / names.CONVERGENCE, self.stats)

    def finish(self, half_maps: list[np.ndarray], full_map: np.ndarray, table: pd.DataFrame,
               masked_fsc: dict | None = None) -> None:
        if masked_fsc is not None:
            names.write_json(self.folder / names.MASKED_FSC, masked_fsc)
        else:  # an earlier attempt's, made with a mask this refinement does not have
            (self.folder / names.MASKED_FSC).unlink(missing_ok=True)
        write_map(self.folder / "half1_unfil.mrc", half_maps[0], self.pixel_size)
        write_map(self.folder / "half2_unfil.mrc", half_maps[1], self.pixel_size)
        write_map(self.folder / "threed_final.mrc", self.written_map(full_map), self.pixel_size)
        write_particles_star(self.folder / "particles_final.star", table, self.optics, image_files=self._image_files())

    def checked(self, moved) -> None:
        """``poses_moved.json``: ``moved``'s record (a :class:`multirefine.refine.posecheck.PosesMoved`),
        or none where the refinement had no poses to compare."""
        if moved is None:
            (self.folder / names.POSES_MOVED).unlink(missing_ok=True)
        else:
            names.write_json(self.folder / names.POSES_MOVED, moved.to_json())

    def mark_finished(self, marker: dict) -> None:
        names.write_json(self.folder / names.MODEL_FINISHED, marker)

    def earlier(self, marker: dict) -> list[SingleStats] | None:
        """The statistics of the model's refinement as an earlier attempt of this run finished
        it, if its ``finished.json`` says it was made from the same particles with the same
        options (``marker``); else None."""
        try:
            if json.loads((self.folder / names.MODEL_FINISHED).read_text()) != marker:
                return None
            stats = read_convergence(self.folder / names.CONVERGENCE, SingleStats)
        except (OSError, ValueError, TypeError):
            return None
        if not stats or not (self.folder / "threed_final.mrc").exists():
            return None
        return stats

    def clear(self) -> None:
        """Remove what an earlier attempt wrote into the folder (an interrupted one, or a
        finished one made from another classification or with other options): the model's
        own refinement's files only, so that nothing stale outlives the new refinement.
        Other files stay."""
        folder = self.folder
        if not folder.is_dir():
            return
        (folder / names.MODEL_FINISHED).unlink(missing_ok=True)
        stale = [path for path in folder.iterdir() if _MODEL_OUTPUTS.fullmatch(path.name)]
        for path in stale:
            path.unlink()
        if stale:
            log.info("%s: removed %d files of an earlier refinement of this model", folder, len(stale))
