"""3-D maps (MRC and EMAN2 HDF5) and MRC particle-stack writing.

Maps are float32 arrays ``data[z, y, x]`` (mrcfile's order) with a cubic shape ``(D, D, D)``
and a voxel size in Å. Readers raise :class:`InputError` naming the file for a missing file,
a non-cubic map, or NaN/Inf values. Writers are atomic (temporary name, then rename), write
float32 (MRC mode 2), origin 0 and the voxel size in the header.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import mrcfile
import numpy as np

from multirefine.errors import InputError
from multirefine.io.atomic import atomic_path, temporary_sibling
from multirefine.io.eman2 import read_eman2_volumes

__all__ = [
    "MrcStackWriter",
    "read_map",
    "read_maps",
    "write_map",
    "write_stack",
]

_HDF_SUFFIXES = (".hdf", ".h5", ".hdf5")


def _header_voxel_size(mrc: mrcfile.mrcfile.MrcFile) -> float | None:
    size = float(mrc.voxel_size.x)
    return size if np.isfinite(size) and size > 0 else None


def _read_mrc(path: Path) -> tuple[np.ndarray, float | None, int]:
    """Data as stored, voxel size, and the header's mz (volume size in a volume stack)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                if mrc.data is None:
                    raise InputError(f"{path}: MRC header or data is unreadable")
                data = np.asarray(mrc.data)
                if np.iscomplexobj(data):
                    raise InputError(f"{path}: complex MRC data; expected a real-space map")
                return data.astype(np.float32), _header_voxel_size(mrc), int(mrc.header.mz)
    except InputError:
        raise
    except Exception as err:  # mrcfile raises ValueError/OSError/...
        raise InputError(f"{path}: cannot be read as MRC ({err})") from err


def _check_volume(volume: np.ndarray, path: Path, what: str) -> np.ndarray:
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(f"{path}: {what} has shape {volume.shape}; expected a cubic map (D, D, D)")
    if not np.isfinite(volume).all():
        bad = int(np.count_nonzero(~np.isfinite(volume)))
        raise InputError(f"{path}: {what} contains {bad} NaN/Inf voxels")
    return np.ascontiguousarray(volume, dtype=np.float32)


def _read_volumes(path: Path) -> tuple[list[np.ndarray], float | None]:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() in _HDF_SUFFIXES:
        volumes, apix = read_eman2_volumes(path)
    else:
        data, apix, mz = _read_mrc(path)
        if data.ndim == 4:
            volumes = list(data)
        elif data.ndim == 3 and 0 < mz < data.shape[0] and data.shape[0] % mz == 0:
            volumes = list(data.reshape(-1, mz, *data.shape[1:]))
        else:
            volumes = [data]
    many = len(volumes) > 1
    checked = [
        _check_volume(v, path, f"map {k + 1}" if many else "the map") for k, v in enumerate(volumes)
    ]
    return checked, apix


def read_map(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read one map: ``(float32 (D, D, D) [z, y, x], voxel size Å or None if the header has 0)``.

    MRC is read permissively (quirky headers are fine); ``.hdf``/``.h5`` is EMAN2 HDF5.
    A file holding several maps raises :class:`InputError` (use :func:`read_maps`).
    """
    path = Path(path)
    volumes, apix = _read_volumes(path)
    if len(volumes) != 1:
        raise InputError(f"{path}: holds {len(volumes)} maps; expected one")
    return volumes[0], apix


def read_maps(paths: str | Path | Sequence[str | Path]) -> tuple[np.ndarray, float | None]:
    """Read K maps: ``(float32 (K, D, D, D), voxel size Å or None)``.

    ``paths``: one file holding K maps (an MRC volume stack, i.e. 4-D, or ``nz = K * mz``;
    an EMAN2 HDF5 file with K images) or a list of files, each holding one or more maps.
    Every map must have the same box and (where known) the same voxel size (0.1 %).
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise InputError("no map files given")
    maps: list[np.ndarray] = []
    sizes: list[tuple[Path, float]] = []
    for item in items:
        path = Path(item)
        volumes, apix = _read_volumes(path)
        if maps and volumes[0].shape != maps[0].shape:
            raise InputError(
                f"{path}: map box {volumes[0].shape[0]} differs from {items[0]} "
                f"({maps[0].shape[0]}); expected one box size"
            )
        maps.extend(volumes)
        if apix is not None:
            sizes.append((path, apix))
    if sizes:
        first_path, first = sizes[0]
        for path, apix in sizes[1:]:
            if abs(apix - first) > 1e-3 * first:
                raise InputError(
                    f"{path}: voxel size {apix:g} Å differs from {first_path} ({first:g} Å)"
                )
    return np.stack(maps), (sizes[0][1] if sizes else None)


def write_map(path: str | Path, data: np.ndarray, voxel_size_angstrom: float) -> None:
    """Write a map ``(D, D, D)`` (or a volume stack ``(K, D, D, D)``) as float32 MRC, atomically.

    The header gets ``voxel_size_angstrom`` (Å) and origin 0. The previous file at ``path``
    stays untouched if anything fails.
    """
    array = np.asarray(data, dtype=np.float32)
    if array.ndim not in (3, 4):
        raise ValueError(f"write_map: data has shape {array.shape}; expected (D,D,D) or (K,D,D,D)")
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(array)
        mrc.voxel_size = float(voxel_size_angstrom)
        mrc.header.origin = (0.0, 0.0, 0.0)
        mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
        mrc.update_header_stats()


def _allocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for ``fd`` with Linux's ``fallocate``; an OSError where
    the disk is full. Where the file system or platform cannot (EOPNOTSUPP, not Linux) nothing
    is done: ``posix_fallocate`` would then write every block, hours for a large stack on NFS."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = getattr(libc, "fallocate64", None) or libc.fallocate  # musl: fallocate takes a 64-bit off_t
    except (OSError, AttributeError):
        return
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if call(fd, 0, 0, size) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class MrcStackWriter:
    """Write an MRC particle stack ``(N, D, D)`` in batches without holding it in memory.

    Use as a context manager::

        with MrcStackWriter("particles.mrcs", n_images=100_000, box_size=128,
                            pixel_size_angstrom=1.5) as out:
            out.write(0, first_batch)          # images 0..len(first_batch)-1
            out[1000:2000] = another_batch     # or by slice

    The stack is memory-mapped under a temporary name and renamed to ``path`` on a clean
    exit once all N images were written; on an exception (or if images are missing) the
    temporary file is deleted and ``path`` is untouched.
    """

    def __init__(
        self,
        path: str | Path,
        n_images: int,
        box_size: int,
        pixel_size_angstrom: float,
    ) -> None:
        if n_images < 1 or box_size < 1:
            raise ValueError(f"MrcStackWriter: need n_images >= 1 and box_size >= 1, "
                             f"got {n_images}, {box_size}")
        self.path = Path(path)
        self.n_images = int(n_images)
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self._tmp = temporary_sibling(self.path)
        self._written = np.zeros(self.n_images, dtype=bool)
        self._mrc: mrcfile.mrcmemmap.MrcMemmap | None = mrcfile.new_mmap(
            self._tmp, shape=(self.n_images, self.box_size, self.box_size), mrc_mode=2,
            overwrite=True,
        )
        self._mrc.set_image_stack()
        self._reserve()

    def _reserve(self) -> None:
        """Give the memory-mapped file its disk blocks now: a sparse file on a disk that fills
        while it is written ends the process with SIGBUS, where this is an OSError naming
        ``path`` before any image is written."""
        try:
            with open(self._tmp, "r+b") as handle:
                _allocate(handle.fileno(), os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return  # a file system that cannot reserve blocks: written as before
            self.abort()
            raise type(exc)(exc.errno, exc.strerror, str(self.path)) from None

    def __enter__(self) -> MrcStackWriter:
        return self

    def __setitem__(self, index: slice, images: np.ndarray) -> None:
        if self._mrc is None:
            raise ValueError("MrcStackWriter: already closed")
        rows = np.arange(self.n_images)[index]
        images = np.asarray(images, dtype=np.float32)
        if images.shape != (len(rows), self.box_size, self.box_size):
            raise ValueError(
                f"MrcStackWriter: images of shape {images.shape} for {len(rows)} rows; "
                f"expected ({len(rows)}, {self.box_size}, {self.box_size})"
            )
        self._mrc.data[index] = images
        self._written[rows] = True

    def write(self, start: int, images: np.ndarray) -> None:
        """Write ``images`` ``(n, D, D)`` at rows ``start .. start + n - 1``."""
        self[start : start + len(images)] = images

    def close(self) -> None:
        """Finish the header and rename into place; raise if images are missing."""
        if self._mrc is None:
            return
        mrc, self._mrc = self._mrc, None
        try:
            if not self._written.all():
                missing = int(np.count_nonzero(~self._written))
                raise ValueError(
                    f"MrcStackWriter: {missing} of {self.n_images} images of {self.path} "
                    "were never written"
                )
            mrc.voxel_size = self.pixel_size_angstrom
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.update_header_stats()
            mrc.flush()
            mrc.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort(mrc)
            raise

    def abort(self, mrc: mrcfile.mrcmemmap.MrcMemmap | None = None) -> None:
        """Discard the temporary file; ``path`` stays as it was."""
        handle = mrc if mrc is not None else self._mrc
        self._mrc = None
        if handle is not None:
            try:
                handle.close()
            except Exception:  # noqa: BLE001, S110 - best effort while cleaning up
                pass
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError:  # a file system that never held it: the write's own error is the one to report
            pass

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_stack(path: str | Path, images: np.ndarray, pixel_size_angstrom: float) -> None:
    """Write particle images ``(N, D, D)`` as a float32 ``.mrcs`` stack, atomically."""
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise ValueError(f"write_stack: images have shape {array.shape}; expected (N, D, D)")
    with MrcStackWriter(path, array.shape[0], array.shape[1], pixel_size_angstrom) as out:
        out.write(0, array)
