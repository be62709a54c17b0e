"""EMAN2 files: HDF5 image stacks and maps, and ``.lst`` particle lists.

**HDF5 layout** (as EMAN2 2.99 writes it; checked on a file EMAN2 wrote): image ``i``
(0-based) is the dataset ``MDF/images/<i>/image``, shape ``(ny, nx)`` for images and
``(nz, ny, nx)`` for maps, like MRC ``data[z, y, x]``. Its header is the attributes
``EMAN.*`` of the group ``MDF/images/<i>`` (``EMAN.apix_x`` Å, ``EMAN.ctf``,
``EMAN.xform.projection``, ...); ``MDF/images`` has ``imageid_max`` = N - 1. Images that
EMAN2 stored bit-reduced (``EMAN.stored_renderbits`` b > 0) are integers ``k`` meaning
``min + k / (2^b - 1) * (max - min)`` with ``EMAN.stored_rendermin/max``.

**CTF** (``EMAN.ctf``, an ``EMAN2Ctf`` string): ``E`` then space-separated
``defocus dfdiff dfang bfactor ampcont voltage cs apix dsbg``, then the background and SNR
curves as ``count,v1,v2,...``. Units: defocus and dfdiff in µm (defocus positive for
underfocus, the *mean* defocus; dfdiff the *full* difference between the two axes), dfang
in degrees, B in Å², ampcont in percent, voltage in kV, Cs in mm, apix in Å. So

    rlnDefocusU = (defocus + dfdiff / 2) * 1e4 Å,  rlnDefocusV = (defocus - dfdiff / 2) * 1e4 Å,
    rlnDefocusAngle = dfang,  rlnAmplitudeContrast = ampcont / 100.

Evidence: EMAN2's own exporters write ``defocusU = 1000*(defocus + dfdiff/2)`` nm,
``defocusV = 1000*(defocus - dfdiff/2)`` nm, ``defocusUAngle = dfang`` (EMX export), and its
RELION importer sets ``defocus = (U + V)/20000``, ``dfdiff = |U - V|/10000``,
``dfang = rlnDefocusAngle``. EMAN2's B-factor is the envelope of its SNR model, not a CTF
envelope RELION applies, so ``rlnCtfBfactor`` is 0; ``rlnPhaseShift`` is 0.

**Poses** are not converted here: :func:`read_eman2_projection_transforms` returns the raw
3x4 ``EMAN.xform.projection`` matrices; EMAN2 <-> RELION angles belong to geometry.

**.lst** (``#LSX`` fast list: ``#LSX``, a comment line, ``# <line length>``, then lines
padded to that length; or plain ``#LST``): one particle per line,
``index<TAB>file[<TAB>extra]``, ``index`` 0-based into ``file``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from multirefine.errors import InputError
from multirefine.io.atomic import atomic_path
from multirefine.io.columns import (
    AMPLITUDE_CONTRAST,
    CTF_BFACTOR,
    DEFOCUS_ANGLE,
    DEFOCUS_U,
    DEFOCUS_V,
    IMAGE_NAME,
    IMAGE_PIXEL_SIZE,
    PHASE_SHIFT,
    SPHERICAL_ABERRATION,
    VOLTAGE,
    canonicalize,
)
from multirefine.io.watched import WatchedFile

__all__ = [
    "Eman2Ctf",
    "Eman2HdfImages",
    "LstEntry",
    "eman2_ctf_to_relion",
    "is_eman2_hdf",
    "parse_eman2_ctf",
    "read_eman2_hdf_metadata",
    "read_eman2_projection_transforms",
    "read_eman2_volumes",
    "read_lst",
    "write_eman2_map",
    "write_lst",
]

_IMAGES = "MDF/images"


@dataclass(frozen=True)
class Eman2Ctf:
    """The scalar fields of an EMAN2 ``EMAN2Ctf`` (units in the module docstring)."""

    defocus_um: float
    dfdiff_um: float
    dfang_deg: float
    bfactor: float
    ampcont_percent: float
    voltage_kv: float
    cs_mm: float
    apix_angstrom: float
    dsbg: float


@dataclass(frozen=True)
class LstEntry:
    """One line of an EMAN2 ``.lst``: image ``index`` (0-based) of ``file`` (as written)."""

    index: int
    file: str
    extra: str


def parse_eman2_ctf(text: str | bytes, where: str = "EMAN.ctf") -> Eman2Ctf:
    """Parse an ``EMAN2Ctf`` string (``E`` + space-separated fields); InputError if garbled."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text).strip()
    fields = text[1:].split() if text.startswith("E") else []
    try:
        values = [float(v) for v in fields[:9]]
    except ValueError:
        values = []
    if len(values) < 9:
        raise InputError(
            f"{where}: CTF string {text[:40]!r} is not an EMAN2Ctf "
            "('E' + defocus dfdiff dfang bfactor ampcont voltage cs apix dsbg ...)"
        )
    return Eman2Ctf(*values)


def eman2_ctf_to_relion(ctf: Eman2Ctf) -> dict[str, float]:
    """EMAN2 CTF -> RELION CTF columns (Å, degrees, kV, mm, fraction); see module docstring."""
    return {
        DEFOCUS_U: (ctf.defocus_um + ctf.dfdiff_um / 2) * 1e4,
        DEFOCUS_V: (ctf.defocus_um - ctf.dfdiff_um / 2) * 1e4,
        DEFOCUS_ANGLE: ctf.dfang_deg,
        VOLTAGE: ctf.voltage_kv,
        SPHERICAL_ABERRATION: ctf.cs_mm,
        AMPLITUDE_CONTRAST: ctf.ampcont_percent / 100.0,
        PHASE_SHIFT: 0.0,
        CTF_BFACTOR: 0.0,
    }


def _scalar(value: Any) -> Any:
    arr = np.asarray(value)
    if arr.dtype.kind in "SO" and arr.size == 1:
        item = arr.reshape(-1)[0]
        return item.decode("utf-8", "replace") if isinstance(item, bytes) else item
    return arr.reshape(-1)[0] if arr.size == 1 else arr


def is_eman2_hdf(path: str | Path) -> bool:
    """True when ``path`` is an HDF5 file with EMAN2's ``MDF/images`` group."""
    try:
        with h5py.File(path, "r") as fh:
            return _IMAGES in fh
    except (OSError, ValueError):
        return False


def _open_hdf(path: Path) -> h5py.File:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        fh = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot be read as HDF5 ({err})") from err
    if _IMAGES not in fh:
        fh.close()
        raise InputError(f"{path}: no {_IMAGES} group; expected an EMAN2 HDF5 image file")
    return fh


def _image_count(fh: h5py.File, path: Path) -> int:
    group = fh[_IMAGES]
    names = [k for k in group if k.isdigit()]
    n = len(names)
    if n and max(int(k) for k in names) != n - 1:
        raise InputError(f"{path}: EMAN2 images are not numbered 0..{n - 1}")
    return n


def _read_dataset(group: h5py.Group, path: Path, index: int) -> np.ndarray:
    if "image" not in group:
        raise InputError(f"{path}: image {index} has no 'image' dataset")
    data = np.asarray(group["image"][()], dtype=np.float32)
    bits = int(_scalar(group.attrs.get("EMAN.stored_renderbits", 0)) or 0)
    if bits > 0:
        low = float(_scalar(group.attrs.get("EMAN.stored_rendermin", 0.0)))
        high = float(_scalar(group.attrs.get("EMAN.stored_rendermax", 0.0)))
        if high != low:
            data = data / np.float32((1 << bits) - 1) * np.float32(high - low) + np.float32(low)
    return data


class Eman2HdfImages:
    """Random access to the 2-D images of an EMAN2 HDF5 stack (kept open until ``close``).

    ``n``: number of images; ``shape``: ``(ny, nx)``; ``voxel_size``: ``EMAN.apix_x`` of
    image 0 in Å (or ``None``); ``read(indices)`` -> float32 ``(len(indices), ny, nx)``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._watched = WatchedFile(self.path) if self.path.is_file() else None
        self._fh = _open_hdf(self.path)
        self.n = _image_count(self._fh, self.path)
        if self.n == 0:
            self.shape: tuple[int, ...] = (0, 0)
            self.voxel_size: float | None = None
            return
        first = self._fh[f"{_IMAGES}/0"]
        if "image" not in first:
            raise InputError(f"{self.path}: image 0 has no 'image' dataset")
        shape = tuple(first["image"].shape)
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            raise InputError(f"{self.path}: images are {shape}; expected 2-D particle images")
        self.shape = shape
        apix = float(_scalar(first.attrs.get("EMAN.apix_x", 0.0)))
        self.voxel_size = apix if apix > 0 else None

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Images ``indices`` (0-based) as float32 ``(n, ny, nx)``; InputError where the file
        changed since it was opened (:mod:`multirefine.io.watched`)."""
        if self._watched is not None:
            self._watched.check()
        out = np.empty((len(indices),) + self.shape, dtype=np.float32)
        for k, i in enumerate(np.asarray(indices, dtype=np.int64)):
            data = _read_dataset(self._fh[f"{_IMAGES}/{int(i)}"], self.path, int(i))
            if data.shape[-2:] != self.shape:
                raise InputError(
                    f"{self.path}: image {int(i)} is {data.shape}; image 0 is {self.shape}"
                )
            out[k] = data.reshape(self.shape)
        return out

    def close(self) -> None:
        """Close the HDF5 file."""
        self._fh.close()
        if self._watched is not None:
            self._watched.close()


def read_eman2_hdf_metadata(path: str | Path, name: str | None = None) -> pd.DataFrame:
    """Per-image metadata of an EMAN2 HDF5 stack as a canonical table (one row per image).

    ``rlnImageName`` is ``f"{i + 1}@{name or path}"``; ``rlnImagePixelSize`` from
    ``EMAN.apix_x`` (or the CTF's apix); CTF columns from ``EMAN.ctf`` when every image has one.
    """
    path = Path(path)
    label = str(path) if name is None else name
    with _open_hdf(path) as fh:
        n = _image_count(fh, path)
        apix = np.full(n, np.nan)
        ctf_rows: list[dict[str, float]] = []
        for i in range(n):
            attrs = fh[f"{_IMAGES}/{i}"].attrs
            value = float(_scalar(attrs.get("EMAN.apix_x", np.nan)))
            if "EMAN.ctf" in attrs:
                ctf = parse_eman2_ctf(_scalar(attrs["EMAN.ctf"]), f"{path}: image {i} EMAN.ctf")
                ctf_rows.append(eman2_ctf_to_relion(ctf))
                if not value > 0:
                    value = ctf.apix_angstrom
            apix[i] = value if value > 0 else np.nan
    table = pd.DataFrame({IMAGE_NAME: [f"{i + 1}@{label}" for i in range(n)]})
    if n and np.isfinite(apix).all():
        table[IMAGE_PIXEL_SIZE] = apix
    if n and len(ctf_rows) == n:
        table = pd.concat([table, pd.DataFrame(ctf_rows)], axis=1)
    return canonicalize(table, path)


def read_eman2_projection_transforms(path: str | Path) -> np.ndarray:
    """Raw EMAN2 ``EMAN.xform.projection`` matrices, ``(N, 3, 4)`` (NaN where absent)."""
    path = Path(path)
    with _open_hdf(path) as fh:
        n = _image_count(fh, path)
        out = np.full((n, 3, 4), np.nan)
        for i in range(n):
            attrs = fh[f"{_IMAGES}/{i}"].attrs
            if "EMAN.xform.projection" in attrs:
                record = np.asarray(attrs["EMAN.xform.projection"]).reshape(-1)[0]
                out[i] = np.array([float(v) for v in record.tolist()]).reshape(3, 4)
    return out


def read_eman2_volumes(path: str | Path) -> tuple[list[np.ndarray], float | None]:
    """All images of an EMAN2 HDF5 file as float32 arrays ``[z, y, x]`` and apix_x (Å) of #0."""
    path = Path(path)
    with _open_hdf(path) as fh:
        n = _image_count(fh, path)
        if n == 0:
            raise InputError(f"{path}: holds no images")
        volumes = [_read_dataset(fh[f"{_IMAGES}/{i}"], path, i) for i in range(n)]
        apix = float(_scalar(fh[f"{_IMAGES}/0"].attrs.get("EMAN.apix_x", 0.0)))
    return volumes, (apix if apix > 0 else None)


_LST_LINE = re.compile(r"^\s*(-?\d+)\t([^\t]+?)\s*(?:\t(.*))?$")


def write_eman2_map(path: str | Path, volume: np.ndarray, apix_angstrom: float) -> None:
    """Write one map ``(D, D, D)`` as an EMAN2 HDF5 file of one image (the layout above, with
    ``EMAN.apix_x/y/z`` and ``EMAN.nx/ny/nz``), atomically."""
    data = np.ascontiguousarray(volume, dtype=np.float32)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        images = fh.create_group(_IMAGES)
        images.attrs["imageid_max"] = np.array([0], dtype=np.int32)
        image = images.create_group("0")
        image.create_dataset("image", data=data)
        for axis, size in zip("xyz", data.shape[::-1]):
            image.attrs[f"EMAN.apix_{axis}"] = np.array([float(apix_angstrom)], dtype=np.float32)
            image.attrs[f"EMAN.n{axis}"] = np.array([size], dtype=np.int32)


def write_lst(path: str | Path, image_names: pd.Series, image_files: Mapping[str, str] | None = None) -> None:
    """Write particles as an EMAN2 plain list (``#LST``): a line ``index<TAB>file`` per particle,
    ``index`` 0-based in its file, from RELION's ``N@file`` names (``image_files``: the file
    part to write for each one read, e.g. relative to the list's folder; None: as they are)."""
    lines = ["#LST"]
    for name in image_names.astype(str):  # checked when read: "N@file", N from 1
        number, _, file = name.partition("@")
        lines.append(f"{int(number) - 1}\t{file if image_files is None else image_files.get(file, file)}")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def read_lst(path: str | Path) -> list[LstEntry]:
    """Read an EMAN2 ``.lst`` (``#LSX`` fast or ``#LST`` plain) into its entries, in order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()
    if not lines or not (lines[0].startswith("#LSX") or lines[0].startswith("#LST")):
        raise InputError(f"{path}: first line is not #LSX or #LST; expected an EMAN2 .lst file")
    entries: list[LstEntry] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LST_LINE.match(line.rstrip("\n"))
        if match is None:
            raise InputError(
                f"{path}: line {number} is {line[:60]!r}; expected index<TAB>file[<TAB>extra]"
            )
        index = int(match.group(1))
        if index < 0:
            raise InputError(f"{path}: line {number} has negative image index {index}")
        entries.append(LstEntry(index, match.group(2).strip(), (match.group(3) or "").strip()))
    if not entries:
        raise InputError(f"{path}: lists no particles")
    return entries
