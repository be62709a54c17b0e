"""``multirefine refine --mask`` and ``--focusmask``: the mask files read and checked, the run's
copies of them (on the particles' grid: ``mask_MM.mrc``, one per model, and ``focusmask.mrc``)
written, and read back by ``--continue``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multirefine.errors import InputError

__all__ = ["RunMasks", "read_masks", "saved_masks", "write_masks", "write_subtracted"]


@dataclass
class RunMasks:
    """A run's masks on the particles' grid (None: not given)."""

    solvent: list[np.ndarray] | None = None  # --mask: one, or one per model
    focus: np.ndarray | None = None  # --focusmask


def read_masks(paths: list[str] | None, focus: str | None, apix: float, box: int) -> RunMasks:
    """The ``--mask`` files (their count checked with the options, :class:`RefineOptions`) and
    the ``--focusmask`` file, each checked and on the particles' grid."""
    from multirefine.io.maps import read_map
    from multirefine.refine.solvent import fit_mask

    solvent = None if paths is None else [fit_mask(*read_map(p), apix, box, p) for p in paths]
    return RunMasks(solvent, None if focus is None else fit_mask(*read_map(focus), apix, box, focus))


def write_masks(path: Path, masks: RunMasks, n_models: int, apix: float) -> None:
    """The masks as the run uses them, ``mask_MM.mrc`` and ``focusmask.mrc`` (what ``--continue`` reads)."""
    from multirefine import runfolder
    from multirefine.io.maps import write_map
    from multirefine.refine.solvent import per_model

    if masks.solvent is not None:
        for m, mask in enumerate(per_model(masks.solvent, n_models), start=1):
            write_map(path / runfolder.mask_name(m), mask, apix)
    if masks.focus is not None:
        write_map(path / runfolder.FOCUS_MASK, masks.focus, apix)


def saved_masks(opts, box: int) -> RunMasks:
    """A run's masks as it used them (its copies in the run folder)."""
    from multirefine import runfolder

    run = Path(opts.path)
    solvent = None
    if opts.masks is not None:
        solvent = [_saved(run / runfolder.mask_name(m), f"--mask {','.join(opts.masks)}", box)
                   for m in range(1, opts.n_models + 1)]
    focus = None if opts.focus_mask is None else _saved(run / runfolder.FOCUS_MASK, f"--focusmask {opts.focus_mask}", box)
    return RunMasks(solvent, focus)


def _saved(name: Path, option: str, box: int) -> np.ndarray:
    from multirefine.io.maps import read_map
    from multirefine.refine.solvent import check_mask

    if not name.is_file():
        raise InputError(f"--continue {name.parent}: {name} not found (the run was made with {option} and keeps "
                         "its copy there)")
    volume = read_map(name)[0]
    check_mask(volume, str(name))
    if volume.shape != (box,) * 3:
        raise InputError(f"{name}: {volume.shape[-1]} px; the run's particles are {box} px")
    return volume.astype(np.float32)


def write_subtracted(path: Path, stack, table, maps: list[np.ndarray], focus: np.ndarray, batch_size: int) -> Path:
    """``RUN/subtracted/particles_subtracted.star`` and ``.mrcs``: every particle less the
    models' common outside at its pose (:func:`multirefine.refine.focus.subtracted_images`), its
    table the run's last (poses, classes) with the new image names, for classification without
    alignment elsewhere (RELION's ``--skip_align``). Returns the STAR file."""
    from multirefine import runfolder
    from multirefine.io.maps import MrcStackWriter
    from multirefine.io.star import write_particles_star
    from multirefine.refine.focus import common_outside, subtracted_images
    from multirefine.refine.intensity import INTENSITY_COLUMN

    classes = table["rlnClassNumber"].to_numpy()
    outside = common_outside(maps, focus, [np.sum(classes == m) for m in range(1, len(maps) + 1)])
    folder = path / runfolder.SUBTRACTED
    folder.mkdir(exist_ok=True)
    stack_name, n = "particles_subtracted.mrcs", len(table)
    with MrcStackWriter(folder / stack_name, n, stack.box_size, stack.pixel_size_angstrom) as out:
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(start + batch_size, n))
            out.write(start, subtracted_images(stack, table, outside, rows, INTENSITY_COLUMN))
    subtracted = table.copy()
    subtracted["rlnImageName"] = [f"{i + 1:06d}@{stack_name}" for i in range(n)]
    write_particles_star(folder / "particles_subtracted.star", subtracted, stack.optics)
    return folder / "particles_subtracted.star"
