"""One lazy, batched, index-filterable particle stack for every input format.

:func:`open_particles` dispatches on the extension (``.star``, ``.mrcs``/``.mrc``, ``.cs``,
``.lst``, ``.hdf``/``.h5``) and returns a :class:`ParticleStack`: the canonical metadata
table (:mod:`multirefine.io.columns`) plus on-demand image reads. Images are never all in
memory: MRC files are memory-mapped (``mrcfile.mmap``, permissive), EMAN2 HDF5 images are
read one dataset at a time, and open files are cached (least recently used first out).

The image files, and how ``rlnImageName`` (``N@file``, RELION's) finds them, are
:mod:`multirefine.io.images`'s; :class:`ImageFile`, :class:`MrcImages` and
:func:`open_image_file` are importable from here too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multirefine.errors import InputError
from multirefine.fourier.masks import normalise_background
from multirefine.io.columns import (
    CTF_REQUIRED_COLUMNS,
    IMAGE_NAME,
    IMAGE_PIXEL_SIZE,
    IMAGE_SIZE,
    MAX_PIXEL_SIZE_ANGSTROM,
    canonicalize,
    check_angles,
    check_ctf_columns,
    check_optics,
    check_origins,
    check_premultiplied,
    has_ctf,
)
from multirefine.io.cryosparc import read_cs
from multirefine.io.eman2 import read_eman2_hdf_metadata, read_lst
from multirefine.io.images import (
    HDF_SUFFIXES,
    MRC_SUFFIXES,
    ImageFile,
    ImageResolver,
    MrcImages,
    OpenImageFiles,
    open_image_file,
    parse_image_names,
    relocated_image_files,
)
from multirefine.io.star import assign_optics_groups, fill_pixel_size, read_particles_star

__all__ = [
    "ImageFile",
    "MrcImages",
    "ParticleStack",
    "open_image_file",
    "open_particles",
    "open_usefilt",
    "use_ctf",
]


class ParticleStack:
    """Particles: the canonical metadata table plus lazily read images.

    Attributes: ``path`` (the particle file), ``metadata`` (canonical DataFrame, index
    ``0..N-1``), ``optics`` (the file's optics table or ``None``). Indexing ``stack[i]``
    gives one image ``(D, D)`` float32; a slice, list, integer or boolean array gives
    ``(n, D, D)``. Only the requested images are read; each file is opened once and kept
    open (up to 128 files). Bad input (missing image file, index past the end of its file,
    box-size mismatch, NaN/Inf pixels) raises :class:`InputError` naming the files.
    Build one with :func:`open_particles`.
    """

    def __init__(
        self,
        path: Path,
        metadata: pd.DataFrame,
        optics: pd.DataFrame | None,
        resolver: ImageResolver,
        *,
        box_size: int | None = None,
        files: list[str] | None = None,
        file_ids: np.ndarray | None = None,
        file_index: np.ndarray | None = None,
        open_files: OpenImageFiles | None = None,
        box_origin: str = "",
    ) -> None:
        self.path = Path(path)
        self.metadata = metadata.reset_index(drop=True)
        self.optics = optics
        self._resolver = resolver
        if files is None or file_ids is None or file_index is None:
            files, file_ids, file_index = parse_image_names(self.metadata[IMAGE_NAME], self.path)
        self._files = files
        self._file_ids = np.asarray(file_ids, dtype=np.int64)
        self._file_index = np.asarray(file_index, dtype=np.int64)
        self._open = open_files if open_files is not None else OpenImageFiles()
        self._box = box_size
        self._box_origin = box_origin or "rlnImageSize"
        # The noise model every batch of this stack is whitened by when it is loaded
        # (multirefine.refine.noise.NoiseModel; None: white noise); kept by subsets.
        self.noise = None
        # The table column of each particle's intensity scale its CTF is multiplied by when
        # loaded (multirefine.refine.intensity, --scale; None: none); kept by subsets.
        self.intensity_column = None
        # --norm: each image's background plane and SD beyond this radius (px) taken out as
        # it is read (multirefine.fourier.masks.normalise_background; None: as stored).
        self.background_radius_px = None
        # --no-ctf: the table's CTF parameters are kept (and written out) but not applied;
        # kept by subsets (use_ctf).
        self.ctf_ignored = False
        # The optics groups' beam tilt and Zernike terms applied with the CTF (RELION 3.1's
        # model, multirefine.refine.batch.load_batch); False in a run made before they were.
        self.aberrations = True

    # --- size and geometry ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.metadata)

    def __repr__(self) -> str:
        return f"ParticleStack({str(self.path)!r}, n={len(self)})"

    @property
    def box_size(self) -> int:
        """Box size D in pixels (images are ``(D, D)``)."""
        if self._box is None:
            if len(self) == 0:
                raise InputError(f"{self.path}: holds no particles")
            self._handle(int(self._file_ids[0]))
        assert self._box is not None
        return self._box

    @property
    def pixel_size_angstrom(self) -> float:
        """Pixel size in Å: the most common per-particle ``rlnImagePixelSize``."""
        values = self.metadata[IMAGE_PIXEL_SIZE].to_numpy(dtype=np.float64)
        unique, counts = np.unique(values, return_counts=True)
        return float(unique[np.argmax(counts)])

    @property
    def has_ctf(self) -> bool:
        """True when every particle has complete CTF parameters and ``--no-ctf`` was not given."""
        return not self.ctf_ignored and has_ctf(self.metadata)

    # --- files -------------------------------------------------------------------------
    def _handle(self, file_id: int) -> ImageFile:
        handle = self._open.get(file_id)
        if handle is not None:
            return handle
        name = self._files[file_id]
        handle = open_image_file(self._resolver(name))
        ny, nx = (tuple(handle.shape) + (0, 0))[:2]
        if ny != nx:
            raise InputError(f"{handle.path}: images are {nx}x{ny} pixels; expected square images")
        if self._box is None:
            self._box = int(ny)
            self._box_origin = str(handle.path)
        elif ny != self._box:
            raise InputError(
                f"{handle.path}: images are {ny}x{ny} pixels but the box size of {self.path} is "
                f"{self._box} (from {self._box_origin}); all images must have one box size"
            )
        self._open.put(file_id, handle)
        return handle

    def image_file(self, index: int) -> Path:
        """The resolved image file of particle ``index`` (raises InputError if missing)."""
        return self._resolver(self._files[int(self._file_ids[index])])

    def image_files_for(self, folder: str | Path) -> dict[str, str]:
        """How a STAR file written in ``folder`` names this stack's image files: the file
        part of each ``rlnImageName`` -> the one to write (:func:`multirefine.io.images.relocated_image_file`), so
        that the written names find the images the way the input's did. Raises InputError
        where an image file is missing."""
        return relocated_image_files(self.metadata[IMAGE_NAME], self._resolver, folder)

    # --- reading -----------------------------------------------------------------------
    def _indices(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean mask of shape {idx.shape} for {n} particles")
            return np.flatnonzero(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"particle indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"particle index out of range for {n} particles")
        return np.where(idx < 0, idx + n, idx)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(self._indices([key]))[0]
        return self.read(self._indices(key))

    def read(self, indices: np.ndarray, check_finite: bool = True) -> np.ndarray:
        """Images of particles ``indices`` (0-based ints), float32 ``(n, D, D)``.

        Groups the particles by file so each file is opened once; raises InputError for an
        index past the end of its file and (``check_finite``) for NaN/Inf pixels.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        box = self.box_size
        out = np.empty((len(indices), box, box), dtype=np.float32)
        if len(indices) == 0:
            return out
        file_ids = self._file_ids[indices]
        order = np.argsort(file_ids, kind="stable")
        bounds = np.flatnonzero(np.diff(file_ids[order])) + 1
        for group in np.split(order, bounds):
            handle = self._handle(int(file_ids[group[0]]))
            local = self._file_index[indices[group]]
            past = local >= handle.n
            if past.any():
                k = int(np.flatnonzero(past)[0])
                raise InputError(
                    f"{self.path}: particle {int(indices[group[k]])} refers to image "
                    f"{int(local[k]) + 1} of {handle.path}, which holds {handle.n} images"
                )
            sort = np.argsort(local, kind="stable")
            out[group[sort]] = handle.read(local[sort])
        if check_finite:
            finite = np.isfinite(out).reshape(len(out), -1).all(axis=1)
            if not finite.all():
                k = int(np.flatnonzero(~finite)[0])
                row = int(indices[k])
                raise InputError(
                    f"{self.path}: particle {row} ({self._file_index[row] + 1}@"
                    f"{self.image_file(row)}) contains NaN or Inf pixels"
                )
        if self.background_radius_px is not None:
            out = normalise_background(out, self.background_radius_px)
        return out

    def batches(
        self, batch_size: int, indices: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices (b,), images (b, D, D))`` over all particles (or ``indices``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.arange(len(self)) if indices is None else self._indices(indices)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield chunk, self.read(chunk)

    def subset(self, indices: Any) -> ParticleStack:
        """A new stack over particles ``indices`` (metadata re-indexed 0..n-1; files shared)."""
        idx = self._indices(indices)
        out = ParticleStack(
            self.path,
            self.metadata.iloc[idx].reset_index(drop=True),
            self.optics,
            self._resolver,
            box_size=self._box,
            files=self._files,
            file_ids=self._file_ids[idx],
            file_index=self._file_index[idx],
            open_files=self._open,
            box_origin=self._box_origin,
        )
        out.noise = self.noise
        out.intensity_column = self.intensity_column
        out.background_radius_px = self.background_radius_px
        out.ctf_ignored = self.ctf_ignored
        out.aberrations = self.aberrations
        return out

    def with_noise(self, noise) -> ParticleStack:
        """The same particles, whitened by ``noise`` when loaded (:mod:`multirefine.refine.noise`)."""
        out = self.subset(slice(None))
        out.noise = noise
        return out

    def with_metadata(
        self, metadata: pd.DataFrame, optics: pd.DataFrame | None = None
    ) -> ParticleStack:
        """The same images with another metadata table of the same length (e.g. new poses)."""
        if len(metadata) != len(self):
            raise ValueError(f"metadata has {len(metadata)} rows for {len(self)} particles")
        out = self.subset(slice(None))
        out.metadata = metadata.reset_index(drop=True)
        out.optics = optics if optics is not None else self.optics
        return out

    def check(self, sample: int | None = None, batch_size: int = 256) -> None:
        """Validate the stack; raise InputError on the first problem.

        Resolves and opens every image file (missing files, box sizes), checks every index
        against its file's length, then reads images looking for NaN/Inf: all of them
        (``sample=None``), a random sample of ``sample`` particles, or none (``sample=0``).
        """
        for file_id in range(len(self._files)):
            selected = np.flatnonzero(self._file_ids == file_id)
            if len(selected) == 0:
                continue
            handle = self._handle(file_id)
            worst = int(selected[np.argmax(self._file_index[selected])])
            if self._file_index[worst] >= handle.n:
                raise InputError(
                    f"{self.path}: particle {worst} refers to image "
                    f"{int(self._file_index[worst]) + 1} of {handle.path}, "
                    f"which holds {handle.n} images"
                )
        if sample == 0 or len(self) == 0:
            return
        if sample is None or sample >= len(self):
            chosen = np.arange(len(self))
        else:
            chosen = np.sort(np.random.default_rng(0).choice(len(self), sample, replace=False))
        for _ in self.batches(batch_size, chosen):
            pass

    def close(self) -> None:
        """Drop the open image files (they close once no read uses them)."""
        self._open.clear()

    def __enter__(self) -> ParticleStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _header_pixel_size(stack: ParticleStack) -> float | None:
    if len(stack) == 0:
        return None
    return stack._handle(int(stack._file_ids[0])).voxel_size


def _finish(
    path: Path,
    metadata: pd.DataFrame,
    optics: pd.DataFrame | None,
    resolver: ImageResolver,
    apix: float | None,
    box_size: int | None,
    check_files: bool,
) -> ParticleStack:
    """Resolve the pixel size (apix > file metadata > image header), optics groups, box."""
    if IMAGE_SIZE in metadata.columns and box_size is None and len(metadata):
        sizes = metadata[IMAGE_SIZE].unique()
        if len(sizes) > 1:
            raise InputError(f"{path}: {IMAGE_SIZE} differs between optics groups {list(sizes)}")
        box_size = int(sizes[0])
    if apix is not None:  # checked by open_particles
        metadata = metadata.assign(**{IMAGE_PIXEL_SIZE: float(apix)})
        if optics is not None and IMAGE_PIXEL_SIZE in optics.columns:
            optics = optics.assign(**{IMAGE_PIXEL_SIZE: float(apix)})
    stack = ParticleStack(path, metadata, optics, resolver, box_size=box_size)
    if check_files:
        for name in stack._files:
            resolver(name)
    if IMAGE_PIXEL_SIZE not in stack.metadata.columns:
        header = _header_pixel_size(stack)
        if header is None:
            raise InputError(
                f"{path}: pixel size unknown (no {IMAGE_PIXEL_SIZE} in the metadata and the "
                f"image header of {stack.image_file(0)} says 0); pass --apix"
            )
        stack.metadata = fill_pixel_size(stack.metadata, header)
    stack.metadata = assign_optics_groups(canonicalize(stack.metadata, path), stack._box)
    check_ctf_columns(stack.metadata, path)
    check_angles(stack.metadata, path)
    check_premultiplied(stack.optics if stack.optics is not None else stack.metadata, path)
    if stack._box is not None:  # known without reading an image (a .cs file's may be absent)
        check_origins(stack.metadata, path, stack._box)
    return stack


def use_ctf(stack: ParticleStack, no_ctf: bool, aberrations: bool = True) -> None:
    """The CTF choice RELION asks for (its ``--ctf``): the particles' CTF is applied where they
    have one, with their optics groups' beam tilt and Zernike terms (unless ``aberrations`` is
    False: a run made before they were); a stack without one needs ``--no-ctf`` (images
    phase-flipped already, or made without a CTF), which also leaves a CTF the table holds
    unapplied. InputError otherwise, and where the optics hold what is not modelled
    (:func:`multirefine.io.columns.check_optics`)."""
    if aberrations:  # a run made before they were applied goes on as it ran
        check_optics(stack.metadata, stack.path)  # with each group's values copied to its particles
    stack.aberrations = aberrations
    if no_ctf:
        stack.ctf_ignored = True
    elif not has_ctf(stack.metadata):
        raise InputError(f"{stack.path}: no CTF parameters ({', '.join(CTF_REQUIRED_COLUMNS)}); give --no-ctf "
                         "to use the images without CTF correction (phase-flipped already, or made without a CTF)")


def open_particles(
    path: str | Path, apix: float | None = None, *, check_files: bool = True
) -> ParticleStack:
    """Open a particle file of any supported kind as a :class:`ParticleStack`.

    ``path``: ``.star`` (RELION 3.0/3.1/5), ``.mrcs``/``.mrc`` (a bare image stack),
    ``.cs`` (cryoSPARC), ``.lst`` (EMAN2 list), ``.hdf``/``.h5`` (EMAN2 stack).
    ``apix``: pixel size in Å that overrides whatever the files say. Without it the pixel
    size comes from the metadata (STAR optics ``rlnImagePixelSize``, RELION 3.0
    ``rlnDetectorPixelSize`` µm * 1e4 / ``rlnMagnification``, ``.cs`` ``blob/psize_A``,
    EMAN2 ``apix_x``), else from the first image's header; a header voxel size of 0 raises
    :class:`InputError` suggesting ``--apix``. ``check_files``: check at once that every
    image file a STAR/``.lst`` names exists (else only when its images are read; ``.cs``
    files are always checked lazily, so their metadata is usable without the images).
    """
    path = Path(path)
    if apix is not None and not (np.isfinite(apix) and 0 < apix <= MAX_PIXEL_SIZE_ANGSTROM):
        raise InputError(f"--apix {apix:g}: expected a positive number of Å per pixel, up to "
                         f"{MAX_PIXEL_SIZE_ANGSTROM:g}")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    here = Path.cwd()
    if suffix == ".star":
        star = read_particles_star(path, apix=apix)
        if len(star.metadata) == 0:
            raise InputError(f"{path}: data_particles has no rows; no particles to read")
        resolver = ImageResolver(path, [path.parent, here])
        return _finish(path, star.metadata, star.optics, resolver, apix, None, check_files)
    if suffix == ".cs":
        metadata, box = read_cs(path)
        resolver = ImageResolver(path, [path.parent, path.parent.parent, here], strip_leading=True)
        return _finish(path, metadata, None, resolver, apix, box, False)
    if suffix == ".lst":
        return _open_lst(path, apix, here, check_files)
    if suffix in MRC_SUFFIXES or suffix in HDF_SUFFIXES:
        handle = open_image_file(path)
        name = str(path)
        if suffix in HDF_SUFFIXES:
            metadata = read_eman2_hdf_metadata(path, name=name)
        else:
            metadata = pd.DataFrame({IMAGE_NAME: [f"{i + 1}@{name}" for i in range(handle.n)]})
        if handle.n == 0:
            raise InputError(f"{path}: holds no images")
        resolver = ImageResolver(path, [here])
        return _finish(path, metadata, None, resolver, apix, None, True)
    raise InputError(
        f"{path}: unknown particle file type {suffix!r}; "
        "expected .star, .mrcs, .mrc, .cs, .lst, .hdf or .h5"
    )


def _open_lst(path: Path, apix: float | None, here: Path, check_files: bool) -> ParticleStack:
    entries = read_lst(path)
    resolver = ImageResolver(path, [path.parent, path.parent.parent, here])
    per_file: dict[str, pd.DataFrame | None] = {}
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.file in per_file:
            continue
        resolved = resolver(entry.file)
        if resolved.suffix.lower() in HDF_SUFFIXES:
            table = read_eman2_hdf_metadata(resolved, name=entry.file)
            per_file[entry.file], counts[entry.file] = table, len(table)
        else:
            per_file[entry.file], counts[entry.file] = None, open_image_file(resolved).n
    rows: list[dict[str, Any]] = []
    for number, entry in enumerate(entries):
        if entry.index >= counts[entry.file]:
            raise InputError(
                f"{path}: particle {number} refers to image {entry.index} (0-based) of "
                f"{entry.file}, which holds {counts[entry.file]} images"
            )
        table = per_file[entry.file]
        row: dict[str, Any] = {} if table is None else table.iloc[entry.index].to_dict()
        row[IMAGE_NAME] = f"{entry.index + 1}@{entry.file}"
        rows.append(row)
    metadata = pd.DataFrame(rows)
    metadata = metadata[[IMAGE_NAME] + [c for c in metadata.columns if c != IMAGE_NAME]]
    if IMAGE_PIXEL_SIZE in metadata.columns and metadata[IMAGE_PIXEL_SIZE].isna().any():
        metadata = metadata.drop(columns=[IMAGE_PIXEL_SIZE])
    return _finish(path, metadata, None, resolver, apix, None, check_files)


def open_usefilt(
    stack: ParticleStack, path: str | Path, apix: float | None = None
) -> ParticleStack:
    """Open ``path`` as the ``--usefilt`` companion of ``stack``: its images, ``stack``'s metadata.

    The filtered stack must hold the same number of particles (1:1, same order) and the same
    box size, else :class:`InputError`. Its pixel size defaults to ``stack``'s.
    """
    filtered = open_particles(path, apix=apix if apix is not None else stack.pixel_size_angstrom)
    if len(filtered) != len(stack):
        raise InputError(
            f"{path}: holds {len(filtered)} particles but {stack.path} holds {len(stack)}; "
            "--usefilt needs the same particles in the same order"
        )
    if filtered.box_size != stack.box_size:
        raise InputError(
            f"{path}: box size {filtered.box_size} differs from {stack.path} ({stack.box_size})"
        )
    return filtered.with_metadata(stack.metadata, stack.optics)
