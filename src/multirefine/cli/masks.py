"""``multirefine refine --mask``: the mask files read and checked, the run's copies of them
(``mask_MM.mrc``, on the particles' grid, one per model) written and read back by
``--continue``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multirefine.errors import InputError

__all__ = ["read_masks", "saved_masks", "write_masks"]


def read_masks(text: str | None, k: int, apix: float, box: int):
    """The ``--mask`` files, checked and on the particles' grid (None: none given)."""
    from multirefine.io.maps import read_map
    from multirefine.refine.solvent import fit_mask

    if text is None:
        return None
    paths = [t.strip() for t in text.split(",") if t.strip()]
    if len(paths) not in (1, k):
        raise InputError(f"--mask {text}: {len(paths)} masks for {k} models (give one, or one per model)")
    return [fit_mask(*read_map(p), apix, box, p) for p in paths]


def write_masks(path: Path, masks, n_models: int, apix: float) -> None:
    """Each model's mask as the run uses it, ``mask_MM.mrc`` (what ``--continue`` reads)."""
    from multirefine import runfolder
    from multirefine.io.maps import write_map
    from multirefine.refine.solvent import per_model

    for m, mask in enumerate(per_model(masks, n_models), start=1):
        write_map(path / runfolder.mask_name(m), mask, apix)


def saved_masks(opts, box: int):
    """A run's masks as it used them (its copies, ``mask_MM.mrc``), None where it had none."""
    from multirefine import runfolder
    from multirefine.io.maps import read_map
    from multirefine.refine.solvent import check_mask

    if opts.masks is None:
        return None
    out = []
    for m in range(1, opts.n_models + 1):
        name = Path(opts.path) / runfolder.mask_name(m)
        if not name.is_file():
            raise InputError(f"--continue {opts.path}: {name} not found (the run was made with --mask "
                             f"{','.join(opts.masks)} and keeps its masks there)")
        volume = read_map(name)[0]
        check_mask(volume, str(name))
        if volume.shape != (box,) * 3:
            raise InputError(f"{name}: {volume.shape[-1]} px; the run's particles are {box} px")
        out.append(volume.astype(np.float32))
    return out
