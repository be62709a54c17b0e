"""Image files and the references to them: what a :class:`~multirefine.io.particles.ParticleStack`
reads its images through.

:func:`open_image_file` opens a file of 2-D images (:class:`ImageFile`): an MRC stack,
memory-mapped (``mrcfile.mmap``, permissive), or an EMAN2 HDF5 stack, read one dataset at a
time. :class:`OpenImageFiles` keeps open files (least recently used first out).

Image references follow RELION: ``rlnImageName = "N@file"`` with ``N`` 1-based
(:func:`parse_image_names`). A relative ``file`` is looked up relative to the particle
file's folder, then relative to the current directory at open time (RELION projects store
paths relative to the project folder). cryoSPARC paths (relative to the *project* folder)
are also tried relative to the ``.cs`` file's parent folder and with leading folders
stripped; EMAN2 ``.lst`` paths also relative to the ``.lst`` file's parent folder (EMAN2
projects keep lists in ``sets/``). :class:`ImageResolver` does the looking up.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mrcfile
import numpy as np
import pandas as pd

from multirefine.errors import InputError
from multirefine.io.columns import IMAGE_NAME
from multirefine.io.eman2 import Eman2HdfImages
from multirefine.io.watched import WatchedFile

__all__ = [
    "HDF_SUFFIXES",
    "MAX_OPEN_FILES",
    "MRC_SUFFIXES",
    "ImageFile",
    "ImageResolver",
    "MrcImages",
    "OpenImageFiles",
    "open_image_file",
    "parse_image_names",
    "relocated_image_file",
    "relocated_image_files",
]

HDF_SUFFIXES = (".hdf", ".h5", ".hdf5")
MRC_SUFFIXES = (".mrcs", ".mrc", ".st", ".map")
MAX_OPEN_FILES = 128


class ImageFile(Protocol):
    """An open file of 2-D images: ``n`` images of ``shape`` (ny, nx), voxel size in Å."""

    path: Path
    n: int
    shape: tuple[int, ...]
    voxel_size: float | None

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Images ``indices`` (0-based, any order) as float32 ``(len(indices), ny, nx)``."""
        ...


class MrcImages:
    """A memory-mapped MRC image stack (a single 2-D image counts as a stack of one)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Opened before the map, so that a change after it shows.
        self._watched = WatchedFile(self.path) if self.path.is_file() else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mrc = mrcfile.mmap(self.path, mode="r", permissive=True)
        except Exception as err:  # mrcfile raises ValueError/OSError/...
            raise InputError(f"{self.path}: cannot be read as MRC ({err})") from err
        data = mrc.data
        size = float(mrc.voxel_size.x)
        if data is None:
            mrc.close()
            raise InputError(f"{self.path}: MRC data block is unreadable (truncated file?)")
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise InputError(
                f"{self.path}: MRC data has shape {data.shape}; expected images (N, ny, nx)"
            )
        if np.iscomplexobj(data):
            raise InputError(f"{self.path}: complex MRC data; expected real images")
        self._mrc = mrc
        self._data = data
        self.n = int(data.shape[0])
        self.shape: tuple[int, ...] = tuple(int(s) for s in data.shape[1:])
        self.voxel_size: float | None = size if np.isfinite(size) and size > 0 else None

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Images ``indices`` as float32 ``(len(indices), ny, nx)`` (a copy); InputError where the
        file changed since it was opened (:mod:`multirefine.io.watched`)."""
        if self._watched is not None:
            self._watched.check()
        return np.array(self._data[np.asarray(indices, dtype=np.int64)], dtype=np.float32)


def open_image_file(path: str | Path) -> ImageFile:
    """Open an image file by extension: EMAN2 HDF5 for ``.hdf``/``.h5``, MRC otherwise."""
    path = Path(path)
    if path.suffix.lower() in HDF_SUFFIXES:
        return Eman2HdfImages(path)
    return MrcImages(path)


@dataclass
class ImageResolver:
    """Turns the file part of ``rlnImageName`` into an existing path (see the module docstring)."""

    source: Path
    bases: list[Path]
    strip_leading: bool = False
    cache: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Absolute, so that a copy of the stack opened in another folder (a Dask worker) finds
        # the same files.
        self.bases = [Path(base).absolute() for base in self.bases]

    def candidates(self, name: str) -> list[Path]:
        relative = Path(name)
        if relative.is_absolute():
            return [relative]
        out = [base / relative for base in self.bases]
        if self.strip_leading:
            parts = relative.parts
            for k in range(1, len(parts)):
                out += [base / Path(*parts[k:]) for base in self.bases]
        return list(dict.fromkeys(out))  # unique, in order

    def __call__(self, name: str) -> Path:
        found = self.cache.get(name)
        if found is not None:
            return found
        tried = self.candidates(name)
        for candidate in tried:
            if candidate.is_file():
                self.cache[name] = candidate
                return candidate
        where = ", ".join(str(p) for p in tried)
        raise InputError(f"{self.source}: image file {name} not found (tried {where})")


class OpenImageFiles:
    """Least-recently-used cache of open image files, keyed by file number; thread-safe.

    Evicted files are dropped, not closed: a thread still reading one keeps it alive and it
    closes when the last reference goes.
    """

    def __init__(self, max_open: int = MAX_OPEN_FILES) -> None:
        self.max_open = max_open
        self._files: OrderedDict[int, ImageFile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: int) -> ImageFile | None:
        with self._lock:
            handle = self._files.get(key)
            if handle is not None:
                self._files.move_to_end(key)
            return handle

    def put(self, key: int, handle: ImageFile) -> None:
        with self._lock:
            self._files[key] = handle
            self._files.move_to_end(key)
            while len(self._files) > self.max_open:
                self._files.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"])  # type: ignore[misc]


def relocated_image_file(name: str, found: Path, folder: str | Path) -> str:
    """The file part of ``rlnImageName`` to write in a STAR file in ``folder`` for an image
    file that ``name`` found at ``found``.

    An absolute name, and a relative one that finds the same file from the current directory
    (a RELION project: RELION and its users run in the project folder), stay as they are. Any
    other name (it was found from the input file's own folder) is rewritten relative to
    ``folder``: it then finds the file from the STAR file's folder, where this program looks
    first, and from ``folder``, where RELION looks when it is run there.
    """
    if Path(name).is_absolute():
        return name
    local = Path(name).absolute()
    if local.is_file() and os.path.samefile(local, found):
        return name
    return os.path.relpath(os.path.abspath(found), os.path.abspath(folder))


def relocated_image_files(names: pd.Series, resolver: ImageResolver, folder: str | Path) -> dict[str, str]:
    """:func:`relocated_image_file` for every file ``names`` (``rlnImageName``) refer to: the
    file part as read -> the one to write in ``folder``. Raises InputError where one is missing."""
    files, _, _ = parse_image_names(names, resolver.source)
    return {name: relocated_image_file(name, resolver(name), folder) for name in files}


def parse_image_names(names: pd.Series, path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``N@file`` -> (unique files, file number per particle, 0-based index per particle)."""
    text = names.astype(str)
    parts = text.str.partition("@")
    has_at = (parts[1] == "@").to_numpy()
    number_text = np.where(has_at, parts[0].to_numpy(dtype=object), "1")
    file_text = np.where(has_at, parts[2].to_numpy(dtype=object), parts[0].to_numpy(dtype=object))
    numbers = pd.to_numeric(pd.Series(number_text), errors="coerce").to_numpy()
    bad = ~np.isfinite(numbers) | (numbers < 1) | (numbers != np.round(numbers))
    bad |= pd.Series(file_text).astype(str).str.strip().eq("").to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: {IMAGE_NAME} of particle {row} is {text.iloc[row]!r}; "
            "expected N@file with N >= 1"
        )
    codes, uniques = pd.factorize(pd.Series(file_text).astype(str))
    return [str(u) for u in uniques], codes.astype(np.int64), numbers.astype(np.int64) - 1
