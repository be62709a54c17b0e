"""RELION STAR particle files: read 3.0, 3.1 and 5.0; write 3.1.

Reading (:func:`read_particles_star`) uses the ``starfile`` package for parsing and returns
the canonical table of :mod:`multirefine.io.columns`:

* RELION 3.1+ (``data_optics`` + ``data_particles``): every optics-group column is merged
  into the particle rows through ``rlnOpticsGroup`` (a value given on the particle row itself
  wins); the optics table is returned unchanged for writing back.
* RELION 3.0 (one ``data_`` block, no optics): the pixel size is
  ``rlnDetectorPixelSize`` (µm) * 1e4 / ``rlnMagnification`` Å (or ``rlnImagePixelSize``);
  ``rlnOriginX/Y`` (pixels) become ``rlnOriginXAngst/YAngst`` (Å).

Writing (:func:`write_particles_star`) produces RELION 3.1 format (``# version 30001``,
``data_optics`` then ``data_particles``), atomically.
"""

from __future__ import annotations

import codecs
import csv
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from multirefine.errors import InputError
from multirefine.io.atomic import atomic_path
from multirefine.io.columns import (
    DETECTOR_PIXEL_SIZE,
    IMAGE_DIMENSIONALITY,
    IMAGE_NAME,
    IMAGE_PIXEL_SIZE,
    IMAGE_SIZE,
    LEGACY_ORIGIN_X,
    LEGACY_ORIGIN_Y,
    MAGNIFICATION,
    OPTICS_COLUMNS,
    OPTICS_GROUP,
    OPTICS_GROUP_NAME,
    ORIGIN_X_ANGST,
    ORIGIN_Y_ANGST,
    STRING_COLUMNS,
    canonicalize,
)
from multirefine.io.images import open_image_file

__all__ = [
    "StarParticles",
    "assign_optics_groups",
    "build_optics_table",
    "fill_pixel_size",
    "read_particles_star",
    "write_particles_star",
]

_STAR_VERSION = "# version 30001"


@dataclass
class StarParticles:
    """What a particle STAR file holds.

    ``metadata``: the canonical table (optics merged per particle). ``optics``: the
    ``data_optics`` table as read (``None`` for RELION 3.0). ``version``: the number of the
    ``# version`` comment (30001, 50001) or ``None``.
    """

    metadata: pd.DataFrame
    optics: pd.DataFrame | None
    version: int | None


def _version(path: Path) -> int | None:
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("# version"):
                try:
                    return int(line.split()[2])
                except (IndexError, ValueError):
                    return None
            if line.startswith("data_"):
                return None
    return None


def _check_text(path: Path) -> None:
    """Raise InputError where the file is not UTF-8 text (a binary file, or damaged)."""
    with open(path, "rb") as fh:
        offset = 0
        decoder = codecs.getincrementaldecoder("utf-8")()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                at = offset + err.start - (len(err.object) - len(chunk))  # the decoder may hold a chunk's last bytes
                raise InputError(f"{path}: byte 0x{err.object[err.start]:02x} at offset {at} is not UTF-8 "
                                 "text; a STAR file is text (is it another kind of file, or damaged?)") from None
            offset += len(chunk)


def _check_complete(table: pd.DataFrame, path: Path, block: str) -> None:
    """Raise InputError when a column is named twice or a row ran short (truncated or garbled file)."""
    twice = table.columns[table.columns.duplicated()]
    if len(twice):
        raise InputError(f"{path}: data_{block} names the column {twice[0]} twice")
    if table.shape[1] == 0 or len(table) == 0:
        return
    last = table.iloc[:, -1]
    short = last.isna().to_numpy() | (last.astype(str).to_numpy() == "")
    if short.any():
        row = int(np.flatnonzero(short)[0])
        raise InputError(
            f"{path}: row {row + 1} of data_{block} has fewer than {table.shape[1]} fields, or no value in its last "
            f"({table.columns[-1]}); the file is truncated or garbled"
        )


def _merge_optics(
    particles: pd.DataFrame, optics: pd.DataFrame, path: Path, block: str
) -> pd.DataFrame:
    if OPTICS_GROUP not in optics.columns:
        raise InputError(f"{path}: no {OPTICS_GROUP} column in data_optics")
    if OPTICS_GROUP not in particles.columns:
        raise InputError(
            f"{path}: no {OPTICS_GROUP} column in data_{block} (needed with data_optics)"
        )
    groups = pd.to_numeric(optics[OPTICS_GROUP], errors="coerce")
    if groups.isna().any() or groups.duplicated().any():
        raise InputError(
            f"{path}: {OPTICS_GROUP} values in data_optics must be distinct integers, "
            f"got {list(optics[OPTICS_GROUP])}"
        )
    table = optics.assign(**{OPTICS_GROUP: groups.astype(np.int64)}).set_index(OPTICS_GROUP)
    particle_groups = pd.to_numeric(particles[OPTICS_GROUP], errors="coerce")
    unknown = ~particle_groups.isin(table.index)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise InputError(
            f"{path}: particle {row} has {OPTICS_GROUP} {particles[OPTICS_GROUP].iloc[row]}, "
            f"which data_optics does not define (groups {sorted(table.index.tolist())})"
        )
    out = particles.copy()
    out[OPTICS_GROUP] = particle_groups.astype(np.int64)
    for column in table.columns:
        values = out[OPTICS_GROUP].map(table[column])
        if column in out.columns:
            out[column] = out[column].where(out[column].notna(), values)
        else:
            out[column] = values
    return out


def fill_pixel_size(metadata: pd.DataFrame, pixel_size_angstrom: float | None) -> pd.DataFrame:
    """Resolve ``rlnImagePixelSize`` (Å) per particle and convert legacy pixel origins.

    Where ``rlnImagePixelSize`` is missing it is taken from ``rlnDetectorPixelSize`` (µm) *
    1e4 / ``rlnMagnification``, else from ``pixel_size_angstrom`` (if given). RELION 3.0
    ``rlnOriginX/Y`` (pixels) become ``rlnOriginXAngst/YAngst`` once the pixel size is known.
    Returns a new table; the input is not modified.
    """
    out = metadata.copy()
    if IMAGE_PIXEL_SIZE in out.columns:
        apix = pd.to_numeric(out[IMAGE_PIXEL_SIZE], errors="coerce")
    else:
        apix = pd.Series(np.nan, index=out.index)
    if DETECTOR_PIXEL_SIZE in out.columns and MAGNIFICATION in out.columns:
        detector = pd.to_numeric(out[DETECTOR_PIXEL_SIZE], errors="coerce")
        magnification = pd.to_numeric(out[MAGNIFICATION], errors="coerce")
        apix = apix.where(apix.notna(), detector * 1e4 / magnification)
    if pixel_size_angstrom is not None:
        apix = apix.where(apix.notna(), float(pixel_size_angstrom))
    if apix.notna().any():
        out[IMAGE_PIXEL_SIZE] = apix.astype(np.float64)
    if apix.notna().all():
        for legacy, angst in ((LEGACY_ORIGIN_X, ORIGIN_X_ANGST), (LEGACY_ORIGIN_Y, ORIGIN_Y_ANGST)):
            if legacy in out.columns:
                if angst not in out.columns:
                    out[angst] = pd.to_numeric(out[legacy], errors="coerce") * apix
                out = out.drop(columns=[legacy])
    return out


def read_particles_star(path: str | Path, apix: float | None = None) -> StarParticles:
    """Read a RELION 3.0 / 3.1 / 5.0 particle STAR file into the canonical table.

    Raises :class:`InputError` (naming the file) for a missing or unparsable file, a file
    without a loop table, without ``rlnImageName``, with a truncated row, or with particles
    referring to an optics group that ``data_optics`` lacks. The pixel size may still be
    missing (pure RELION 3.0 file without magnification); see :func:`fill_pixel_size`.
    ``apix`` (Å), if given, overrides every particle's pixel size before RELION 3.0 pixel
    origins are converted to Å.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    _check_text(path)
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=list(STRING_COLUMNS))
    except Exception as err:  # starfile raises many kinds on garbage
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"{path}: cannot be parsed as a STAR file ({reason}); the file may be truncated "
            "or garbled"
        ) from err
    loops = {name: table for name, table in blocks.items() if isinstance(table, pd.DataFrame)}
    if not loops:
        raise InputError(f"{path}: no data block with a loop_ table; expected data_particles")
    if "particles" in loops:
        name = "particles"
    else:
        with_images = [n for n, t in loops.items() if IMAGE_NAME in t.columns]
        others = [n for n in loops if n != "optics"]
        name = with_images[0] if with_images else (others[0] if others else "particles")
    if name not in loops:
        raise InputError(f"{path}: no data_particles block (found data_optics only)")
    particles = loops[name]
    if IMAGE_NAME not in particles.columns:
        raise InputError(f"{path}: no {IMAGE_NAME} column in data_{name}")
    _check_complete(particles, path, name)
    optics = loops.get("optics") if name != "optics" else None
    if optics is not None:
        _check_complete(optics, path, "optics")
        particles = _merge_optics(particles, optics, path, name)
        optics = canonicalize(optics, path)
    if apix is not None:
        particles = particles.assign(**{IMAGE_PIXEL_SIZE: float(apix)})
    metadata = fill_pixel_size(particles, None)
    return StarParticles(canonicalize(metadata, path), optics, _version(path))


def build_optics_table(
    metadata: pd.DataFrame, box_size: int | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Build a RELION 3.1 optics table from the per-particle optics columns.

    Particles with the same values of every :data:`~multirefine.io.columns.OPTICS_COLUMNS`
    column they carry (voltage, Cs, Q, pixel size, box size, beam tilt, ...) share a group.
    Returns ``(optics, groups)``: the table (``rlnOpticsGroup`` 1..G in order of first
    appearance, ``rlnOpticsGroupName``, the shared columns, ``rlnImageSize`` (from the
    metadata or ``box_size``) and ``rlnImageDimensionality`` = 2) and the group number of
    every particle, ``(N,)`` int64.
    """
    keys = [c for c in OPTICS_COLUMNS if c in metadata.columns]
    table = metadata[keys].copy() if keys else pd.DataFrame(index=metadata.index)
    if IMAGE_SIZE not in table.columns and box_size is not None:
        table[IMAGE_SIZE] = int(box_size)
        keys.append(IMAGE_SIZE)
    if keys:
        groups = table.groupby(keys, sort=False, dropna=False).ngroup().to_numpy() + 1
        optics = table.drop_duplicates(subset=keys).reset_index(drop=True)
    else:
        groups = np.ones(len(metadata), dtype=np.int64)
        optics = pd.DataFrame(index=[0])
    optics.insert(0, OPTICS_GROUP, np.arange(1, len(optics) + 1, dtype=np.int64))
    if OPTICS_GROUP_NAME not in optics.columns:
        optics.insert(1, OPTICS_GROUP_NAME, [f"opticsGroup{g}" for g in optics[OPTICS_GROUP]])
    if IMAGE_DIMENSIONALITY not in optics.columns:
        optics[IMAGE_DIMENSIONALITY] = 2
    return optics, groups.astype(np.int64)


def assign_optics_groups(metadata: pd.DataFrame, box_size: int | None = None) -> pd.DataFrame:
    """Return the table with ``rlnOpticsGroup`` set from :func:`build_optics_table` if absent."""
    if OPTICS_GROUP in metadata.columns:
        return metadata
    _, groups = build_optics_table(metadata, box_size)
    return metadata.assign(**{OPTICS_GROUP: groups})


def _check_optics_consistent(metadata: pd.DataFrame, optics: pd.DataFrame) -> None:
    if OPTICS_GROUP not in optics.columns or OPTICS_GROUP not in metadata.columns:
        raise ValueError("write_particles_star: optics and metadata both need rlnOpticsGroup")
    table = optics.set_index(OPTICS_GROUP)
    missing = ~metadata[OPTICS_GROUP].isin(table.index)
    if missing.any():
        raise ValueError(
            "write_particles_star: particles refer to optics groups "
            f"{sorted(set(metadata.loc[missing, OPTICS_GROUP]))} that the optics table lacks"
        )
    for column in table.columns:
        if column not in metadata.columns:
            continue
        expected = metadata[OPTICS_GROUP].map(table[column])
        actual = metadata[column]
        if pd.api.types.is_numeric_dtype(actual) and pd.api.types.is_numeric_dtype(expected):
            same = np.isclose(actual.to_numpy(float), expected.to_numpy(float), rtol=1e-6)
        else:
            same = actual.astype(str).to_numpy() == expected.astype(str).to_numpy()
        if not same.all():
            raise ValueError(
                f"write_particles_star: per-particle {column} disagrees with the optics table; "
                "pass optics=None to rebuild it"
            )


def _format_loop(name: str, table: pd.DataFrame) -> str:
    header = ["", _STAR_VERSION, "", f"data_{name}", "", "loop_"]
    header += [f"_{column} #{i + 1}" for i, column in enumerate(table.columns)]
    table = table.copy()
    for column in table.columns:
        values = table[column]
        if pd.api.types.is_float_dtype(values):
            finite = np.isfinite(values.to_numpy(dtype=np.float64))
            if finite.all() and (values == np.round(values)).all():
                # keep integral floats recognisably float ("300.0", not "300")
                table[column] = values.astype(np.int64).astype(str) + ".0"
    body = table.to_csv(
        sep=" ",
        header=False,
        index=False,
        float_format="%.10g",
        na_rep="nan",
        quoting=csv.QUOTE_MINIMAL,
        quotechar='"',
        lineterminator="\n",
    )
    return "\n".join(header) + "\n" + body + "\n"


def _box_from_images(star_path: Path, particles: pd.DataFrame) -> int | None:
    """Box size from the header of the first particle's image file, if it can be found."""
    if len(particles) == 0:
        return None
    name = str(particles[IMAGE_NAME].iloc[0]).partition("@")
    file = Path(name[2] if name[1] else name[0])
    candidates = [file] if file.is_absolute() else [star_path.parent / file, Path.cwd() / file]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return int(open_image_file(candidate).shape[-1])
            except InputError:
                return None
    return None


def _renamed_image_files(names: pd.Series, image_files: Mapping[str, str]) -> pd.Series:
    if names.empty:
        return names
    number, at, file = names.astype(str).str.partition("@").T.to_numpy()
    has_at = at == "@"
    file = np.where(has_at, file, number)  # a bare name is image 1 of that file
    renamed = np.array([image_files.get(f, f) for f in file], dtype=object)
    return pd.Series(np.where(has_at, number + "@" + renamed, renamed), index=names.index, name=IMAGE_NAME)


def write_particles_star(
    path: str | Path,
    metadata: pd.DataFrame,
    optics: pd.DataFrame | None = None,
    *,
    box_size: int | None = None,
    image_files: Mapping[str, str] | None = None,
) -> None:
    """Write particles as RELION 3.1 STAR (``data_optics`` then ``data_particles``), atomically.

    ``metadata``: canonical table (needs ``rlnImageName``). ``optics``: the optics table to
    write back (e.g. ``stack.optics``); its per-particle copies must agree with it. With
    ``optics=None`` a table is built by :func:`build_optics_table` (``box_size`` supplies
    ``rlnImageSize`` when the metadata lacks it; failing both, it is read from the header of
    the first image file, found relative to ``path``'s folder or the current directory).
    ``image_files`` renames the file part of ``rlnImageName`` (a file not in it keeps its name;
    :meth:`multirefine.io.particles.ParticleStack.image_files_for` gives the names that stay
    valid in another folder). Optics-level columns are removed from the
    particle rows, as are RELION 3.0's ``rlnMagnification``/``rlnDetectorPixelSize`` once the
    pixel size is in the optics table. Written to a temporary name and renamed.
    """
    if IMAGE_NAME not in metadata.columns:
        raise ValueError("write_particles_star: metadata has no rlnImageName column")
    particles = metadata.reset_index(drop=True)
    if image_files:
        particles[IMAGE_NAME] = _renamed_image_files(particles[IMAGE_NAME], image_files)
    if optics is None:
        optics, groups = build_optics_table(particles, box_size)
        particles = particles.assign(**{OPTICS_GROUP: groups})
    else:
        optics = canonicalize(optics, path).copy()
        _check_optics_consistent(particles, optics)
        if IMAGE_SIZE not in optics.columns and box_size is not None:
            optics[IMAGE_SIZE] = int(box_size)
        if IMAGE_DIMENSIONALITY not in optics.columns:
            optics[IMAGE_DIMENSIONALITY] = 2
    if IMAGE_SIZE not in optics.columns:
        found = _box_from_images(Path(path), particles)
        if found is None:
            warnings.warn(
                f"{path}: box size unknown (no rlnImageSize, no box_size, image file not "
                "found); writing data_optics without rlnImageSize",
                stacklevel=2,
            )
        else:
            optics.insert(optics.columns.get_loc(IMAGE_DIMENSIONALITY), IMAGE_SIZE, found)
    drop = [c for c in optics.columns if c != OPTICS_GROUP and c in particles.columns]
    if IMAGE_PIXEL_SIZE in optics.columns:
        drop += [c for c in (MAGNIFICATION, DETECTOR_PIXEL_SIZE) if c in particles.columns]
    particles = particles.drop(columns=drop)
    text = _format_loop("optics", optics) + _format_loop("particles", particles)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
