"""The canonical per-particle table: RELION 3.1 column names, declared once.

Every particle reader in :mod:`multirefine.io` returns a :class:`pandas.DataFrame` with one
row per particle (index ``0..N-1``) whose columns use RELION 3.1 labels without the leading
underscore. Units are RELION's:

====================================  ====================================================
column                                meaning
====================================  ====================================================
``rlnImageName``                      ``N@file``: image ``N`` (1-based) of an image file
``rlnDefocusU``, ``rlnDefocusV``      defocus, Å, positive for underfocus
``rlnDefocusAngle``                   azimuth of the U axis, degrees, from the x axis
``rlnVoltage``                        acceleration voltage, kV
``rlnSphericalAberration``            Cs, mm
``rlnAmplitudeContrast``              Q, fraction (0.07, not 7 %)
``rlnPhaseShift``                     phase-plate shift, degrees (default 0)
``rlnCtfBfactor``                     CTF B-factor, Å² (default 0)
``rlnImagePixelSize``                 pixel size of the particle image, Å (per particle)
``rlnAngleRot/Tilt/Psi``              RELION ZYZ Euler angles, degrees (see geometry.euler)
``rlnOriginXAngst/YAngst``            -(displacement of the particle from the box centre), Å
``rlnClassNumber``                    model (class), 1-based
``rlnOpticsGroup``                    optics group, 1-based
====================================  ====================================================

Optics-group values (voltage, Cs, Q, pixel size, box size, ...) are *resolved per particle*:
readers merge them into the particle rows, and keep the original optics table apart so the
STAR writer can write it back. Columns a reader does not know are carried through untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from multirefine.errors import InputError

__all__ = [
    "AMPLITUDE_CONTRAST",
    "ANGLE_PSI",
    "ANGLE_ROT",
    "ANGLE_TILT",
    "CLASS_NUMBER",
    "CTF_BFACTOR",
    "CTF_COLUMNS",
    "CTF_DEFAULTS",
    "CTF_RANGES",
    "CTF_REQUIRED_COLUMNS",
    "DEFOCUS_ANGLE",
    "DEFOCUS_U",
    "DEFOCUS_V",
    "DETECTOR_PIXEL_SIZE",
    "FLOAT_COLUMNS",
    "IMAGE_DIMENSIONALITY",
    "IMAGE_NAME",
    "IMAGE_PIXEL_SIZE",
    "IMAGE_SIZE",
    "INT_COLUMNS",
    "LEGACY_ORIGIN_X",
    "LEGACY_ORIGIN_Y",
    "MAGNIFICATION",
    "MAX_ABERRATION_RADIANS",
    "MAX_ANGLE_DEGREES",
    "MAX_BEAM_TILT_MRAD",
    "MAX_DEFOCUS_ANGSTROM",
    "MAX_ENVELOPE_EXPONENT",
    "MAX_INTEGER",
    "MAX_PIXEL_SIZE_ANGSTROM",
    "MAX_VALUE_PROB_DISTRIBUTION",
    "OPTICS_COLUMNS",
    "OPTICS_GROUP",
    "OPTICS_GROUP_NAME",
    "ORIGIN_X_ANGST",
    "ORIGIN_Y_ANGST",
    "PHASE_SHIFT",
    "POSE_COLUMNS",
    "RANDOM_SUBSET",
    "REQUIRED_IMAGE_COLUMNS",
    "SEARCH_SCORE",
    "SPHERICAL_ABERRATION",
    "STRING_COLUMNS",
    "VOLTAGE",
    "aberration_reach_radians",
    "applied_optics",
    "canonicalize",
    "check_angles",
    "check_ctf_columns",
    "check_optics",
    "check_origins",
    "check_premultiplied",
    "has_ctf",
    "optics_note",
    "relion_list",
    "require_columns",
]

# --- images -------------------------------------------------------------------------------
IMAGE_NAME = "rlnImageName"
REQUIRED_IMAGE_COLUMNS: tuple[str, ...] = (IMAGE_NAME,)

# --- CTF ----------------------------------------------------------------------------------
DEFOCUS_U = "rlnDefocusU"  # Å
DEFOCUS_V = "rlnDefocusV"  # Å
DEFOCUS_ANGLE = "rlnDefocusAngle"  # degrees
VOLTAGE = "rlnVoltage"  # kV
SPHERICAL_ABERRATION = "rlnSphericalAberration"  # mm
AMPLITUDE_CONTRAST = "rlnAmplitudeContrast"  # fraction
PHASE_SHIFT = "rlnPhaseShift"  # degrees
CTF_BFACTOR = "rlnCtfBfactor"  # Å^2

MAX_INTEGER = 2**31  # an integer column's values (classes, groups, sizes) lie within it: beyond, damaged
MAX_ANGLE_DEGREES = 3600.0  # ten turns: RELION writes its angles within 360 degrees; beyond this, damaged
MAX_ENVELOPE_EXPONENT = 50.0  # |rlnCtfBfactor| k^2 / 4 at Nyquist: beyond, a CTF of nothing or one that overflows
MAX_DEFOCUS_ANGSTROM = 1e6  # 100 µm: beyond it a defocus is not one (given in other units, or damaged)
MAX_PIXEL_SIZE_ANGSTROM = 1000.0  # beyond it a pixel size is not one (other units, or damaged)
# The span of each microscope value: outside it a value is damaged or in other units (RELION's
# are kV, mm and a fraction); an all-zero or NaN CTF would follow from it without a word.
CTF_RANGES: dict[str, tuple[float, float, str]] = {
    VOLTAGE: (1.0, 3000.0, "kV"),
    SPHERICAL_ABERRATION: (-100.0, 100.0, "mm"),
    AMPLITUDE_CONTRAST: (0.0, 1.0, "(a fraction of 1)"),
}
MAX_BEAM_TILT_MRAD = 100.0  # 6 degrees; CtfRefine's tilts are a few mrad
MAX_ABERRATION_RADIANS = 1e3  # a Zernike list's phase at Nyquist: beyond, damaged (1e40 gave NaN maps)
CTF_REQUIRED_COLUMNS: tuple[str, ...] = (
    DEFOCUS_U,
    DEFOCUS_V,
    DEFOCUS_ANGLE,
    VOLTAGE,
    SPHERICAL_ABERRATION,
    AMPLITUDE_CONTRAST,
)
CTF_DEFAULTS: dict[str, float] = {PHASE_SHIFT: 0.0, CTF_BFACTOR: 0.0}
CTF_COLUMNS: tuple[str, ...] = CTF_REQUIRED_COLUMNS + tuple(CTF_DEFAULTS)

# --- pixel size ---------------------------------------------------------------------------
IMAGE_PIXEL_SIZE = "rlnImagePixelSize"  # Å, resolved per particle
DETECTOR_PIXEL_SIZE = "rlnDetectorPixelSize"  # µm (RELION 3.0)
MAGNIFICATION = "rlnMagnification"  # (RELION 3.0): pixel size Å = det µm * 1e4 / mag

# --- pose ---------------------------------------------------------------------------------
ANGLE_ROT = "rlnAngleRot"  # degrees
ANGLE_TILT = "rlnAngleTilt"  # degrees
ANGLE_PSI = "rlnAnglePsi"  # degrees
ORIGIN_X_ANGST = "rlnOriginXAngst"  # Å
ORIGIN_Y_ANGST = "rlnOriginYAngst"  # Å
LEGACY_ORIGIN_X = "rlnOriginX"  # pixels (RELION 3.0); converted to Å on reading
LEGACY_ORIGIN_Y = "rlnOriginY"
POSE_COLUMNS: tuple[str, ...] = (ANGLE_ROT, ANGLE_TILT, ANGLE_PSI, ORIGIN_X_ANGST, ORIGIN_Y_ANGST)

# --- assignment ---------------------------------------------------------------------------
CLASS_NUMBER = "rlnClassNumber"  # 1-based
MAX_VALUE_PROB_DISTRIBUTION = "rlnMaxValueProbDistribution"  # posterior of the chosen class/pose
RANDOM_SUBSET = "rlnRandomSubset"  # half set, 1 or 2
# The search score of a particle's pose in its model (higher is better): the project's own
# quantity under its own name, not RELION's rlnLogLikeliContribution (a marginal log-likelihood).
SEARCH_SCORE = "mrSearchScore"

# --- optics -------------------------------------------------------------------------------
OPTICS_GROUP = "rlnOpticsGroup"  # 1-based
OPTICS_GROUP_NAME = "rlnOpticsGroupName"
IMAGE_SIZE = "rlnImageSize"  # box size D, pixels
IMAGE_DIMENSIONALITY = "rlnImageDimensionality"  # 2

#: Columns that RELION 3.1+ keeps in ``data_optics`` (one value per optics group). The STAR
#: writer moves these out of the particle rows.
OPTICS_COLUMNS: tuple[str, ...] = (
    OPTICS_GROUP_NAME,
    AMPLITUDE_CONTRAST,
    SPHERICAL_ABERRATION,
    VOLTAGE,
    IMAGE_PIXEL_SIZE,
    "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize",
    IMAGE_SIZE,
    IMAGE_DIMENSIONALITY,
    "rlnCtfDataAreCtfPremultiplied",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
    "rlnMtfFileName",
)

#: Columns parsed as text even when their values look numeric (``rlnMicrographName`` 0001).
STRING_COLUMNS: tuple[str, ...] = (
    IMAGE_NAME,
    "rlnImageOriginalName",
    "rlnMicrographName",
    "rlnMicrographMovieName",
    "rlnReconstructImageName",
    "rlnCtfImage",
    "rlnGroupName",
    OPTICS_GROUP_NAME,
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMtfFileName",
)

FLOAT_COLUMNS: tuple[str, ...] = CTF_COLUMNS + (IMAGE_PIXEL_SIZE,) + POSE_COLUMNS
INT_COLUMNS: tuple[str, ...] = (
    CLASS_NUMBER,
    OPTICS_GROUP,
    IMAGE_SIZE,
    IMAGE_DIMENSIONALITY,
    RANDOM_SUBSET,
)


def require_columns(
    table: pd.DataFrame, columns: Iterable[str], path: str | Path, block: str
) -> None:
    """Raise :class:`InputError` naming the file, the block and the first missing column."""
    for column in columns:
        if column not in table.columns:
            raise InputError(f"{path}: no {column} column in {block}")


def has_ctf(table: pd.DataFrame) -> bool:
    """True when every particle has all of :data:`CTF_REQUIRED_COLUMNS` (finite values)."""
    if len(table) == 0 or any(c not in table.columns for c in CTF_REQUIRED_COLUMNS):
        return False
    values = table[list(CTF_REQUIRED_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.isfinite(values).all())


def canonicalize(table: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Return the table with index ``0..N-1``, declared dtypes, and CTF defaults filled in.

    Float columns of :data:`FLOAT_COLUMNS` become float64 and :data:`INT_COLUMNS` int64;
    a value that cannot be converted raises :class:`InputError` naming ``path`` and the
    column. ``rlnPhaseShift`` and ``rlnCtfBfactor`` default to 0 when the CTF is present.
    """
    out = table.reset_index(drop=True).copy()
    for column in FLOAT_COLUMNS:
        if column in out.columns:
            converted = pd.to_numeric(out[column], errors="coerce")
            bad = ~np.isfinite(converted.to_numpy(dtype=np.float64, na_value=np.nan))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise InputError(
                    f"{path}: {column} of particle {row} is {str(out[column].iloc[row])!r}; "
                    "expected a finite number"
                )
            out[column] = converted.astype(np.float64)
    for column in INT_COLUMNS:
        if column in out.columns:
            converted = pd.to_numeric(out[column], errors="coerce")
            bad = converted.isna() | (converted != np.round(converted)) | ~(converted.abs() < MAX_INTEGER)
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise InputError(
                    f"{path}: {column} of particle {row} is {str(out[column].iloc[row])!r}; "
                    "expected an integer"
                )
            out[column] = converted.astype(np.int64)
    for column in (IMAGE_PIXEL_SIZE, DETECTOR_PIXEL_SIZE, MAGNIFICATION, IMAGE_SIZE):
        if column in out.columns:
            values = out[column].to_numpy(dtype=np.float64)
            top = MAX_PIXEL_SIZE_ANGSTROM if column == IMAGE_PIXEL_SIZE else np.inf
            bad = ~(np.isfinite(values) & (values > 0) & (values <= top))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise InputError(f"{path}: {column} of row {row} is {values[row]:g}; expected a positive number"
                                 + (f" up to {top:g} Å" if np.isfinite(top) else ""))
    if all(c in out.columns for c in CTF_REQUIRED_COLUMNS):
        for column, default in CTF_DEFAULTS.items():
            if column not in out.columns:
                out[column] = default
    return out


def check_ctf_columns(table: pd.DataFrame, path: str | Path) -> None:
    """Raise InputError where particles have part of the CTF: some of
    :data:`CTF_REQUIRED_COLUMNS` but not all, or a value that is not finite (the CTF would be
    dropped for every particle). Particles with none of them have no CTF."""
    present = [c for c in CTF_REQUIRED_COLUMNS if c in table.columns]
    if not present:
        return
    missing = [c for c in CTF_REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: {', '.join(present)} given but not {', '.join(missing)}; "
                         "the CTF needs all of them")
    values = table[list(CTF_REQUIRED_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row, column = (int(i[0]) for i in np.nonzero(bad))
        raise InputError(f"{path}: {CTF_REQUIRED_COLUMNS[column]} of particle {row} is not a number")
    for name in (DEFOCUS_U, DEFOCUS_V):
        far = np.flatnonzero(np.abs(table[name].to_numpy(dtype=np.float64)) > MAX_DEFOCUS_ANGSTROM)
        if len(far):
            raise InputError(f"{path}: {name} of particle {int(far[0])} is {table[name].iloc[far[0]]:g} Å, beyond "
                             f"{MAX_DEFOCUS_ANGSTROM:g} Å (defocus in RELION's files is in Å)")
    for name, (low, high, unit) in CTF_RANGES.items():
        values = table[name].to_numpy(dtype=np.float64)
        out = np.flatnonzero((values < low) | (values > high))
        if len(out):
            raise InputError(f"{path}: {name} of particle {int(out[0])} is {values[out[0]]:g}; expected "
                             f"{low:g} to {high:g} {unit}")


def check_angles(table: pd.DataFrame, path: str | Path) -> None:
    """Raise InputError where an angle (the pose's, the defocus's, the phase shift) lies beyond
    :data:`MAX_ANGLE_DEGREES`, or where a particle's ``rlnCtfBfactor`` makes the CTF's envelope
    ``exp(-B k^2 / 4)`` reach ``e^50`` or ``e^-50`` at Nyquist: values a file damaged in
    writing holds (``1e40``), which would otherwise pass as a random angle or a CTF of zero."""
    for name in (ANGLE_ROT, ANGLE_TILT, ANGLE_PSI, DEFOCUS_ANGLE, PHASE_SHIFT):
        if name in table.columns:
            values = table[name].to_numpy(dtype=np.float64)
            far = np.flatnonzero(np.abs(values) > MAX_ANGLE_DEGREES)
            if len(far):
                raise InputError(f"{path}: {name} of particle {int(far[0])} is {values[far[0]]:g}°, beyond "
                                 f"{MAX_ANGLE_DEGREES:g}° (angles in RELION's files are degrees)")
    if CTF_BFACTOR in table.columns and IMAGE_PIXEL_SIZE in table.columns:
        b = table[CTF_BFACTOR].to_numpy(dtype=np.float64)
        exponent = np.abs(b) / 4 / (2 * table[IMAGE_PIXEL_SIZE].to_numpy(dtype=np.float64)) ** 2
        far = np.flatnonzero(exponent > MAX_ENVELOPE_EXPONENT)
        if len(far):
            row = int(far[0])
            raise InputError(f"{path}: {CTF_BFACTOR} of particle {row} is {b[row]:g} Å²: its CTF envelope "
                             f"exp(-B k²/4) would be e^{-np.sign(b[row]) * exponent[row]:.0f} at Nyquist")


def check_origins(table: pd.DataFrame, path: str | Path, box_size: int) -> None:
    """Raise InputError where a particle's origin (``rlnOriginX/YAngst``) is not finite or lies
    beyond its box: centred by it, the particle would be outside its image."""
    for name in (ORIGIN_X_ANGST, ORIGIN_Y_ANGST):
        if name not in table.columns or IMAGE_PIXEL_SIZE not in table.columns:
            continue
        origin = table[name].to_numpy(dtype=np.float64, na_value=np.nan)
        span = box_size * table[IMAGE_PIXEL_SIZE].to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~(np.abs(origin) <= span))
        if len(bad):
            row = int(bad[0])
            raise InputError(f"{path}: {name} of particle {row} is {origin[row]:g} Å, beyond its box "
                             f"({span[row]:g} Å)")


def check_premultiplied(table: pd.DataFrame | None, path: str | Path) -> None:
    """Raise InputError where an optics group says its images are multiplied by their CTF
    already (``rlnCtfDataAreCtfPremultiplied 1``, RELION's subtomogram averaging): the CTF
    would be applied to them twice."""
    if table is None or "rlnCtfDataAreCtfPremultiplied" not in table.columns:
        return
    flags = pd.to_numeric(table["rlnCtfDataAreCtfPremultiplied"], errors="coerce").fillna(0).to_numpy()
    if np.any(flags != 0):
        raise InputError(f"{path}: rlnCtfDataAreCtfPremultiplied is 1 (images multiplied by their CTF already); "
                         "multirefine needs the images as recorded")


BEAM_TILT = ("rlnBeamTiltX", "rlnBeamTiltY")  # mrad
ZERNIKE = ("rlnOddZernike", "rlnEvenZernike")  # RELION lists: [c0,c1,...]
MAG_MATRIX = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")


def relion_list(value: object) -> list[float]:
    """A RELION list value (``[0.1,0,2.5]``; empty: ``[]``) as numbers; ValueError where a term
    is not one."""
    terms = [float(t) for t in str(value).strip().strip("[]").split(",") if t.strip()]
    if not all(np.isfinite(terms)):
        raise ValueError(f"{value}: a term is not finite")
    return terms


def check_optics(table: pd.DataFrame | None, path: str | Path) -> None:
    """Raise InputError where an optics group's aberrations cannot be used: a Zernike list or
    beam tilt that is not numbers, or a magnification correction (``rlnMagMat``, RELION's
    CtfRefine) that departs from the identity by more than 0.01 %: multirefine does not model
    it (:mod:`multirefine.fourier.aberrations`) and does not drop it unsaid."""
    if table is None:
        return
    for name in ZERNIKE:
        for value in pd.unique(table[name].dropna()) if name in table.columns else ():
            try:
                relion_list(value)
            except ValueError:
                raise InputError(f"{path}: {name} is {value!r}; expected a list of numbers such as "
                                 "[0.012,-0.003]") from None
    for name in (n for n in BEAM_TILT if n in table.columns):
        tilt = pd.to_numeric(table[name], errors="coerce").fillna(0)
        if not np.isfinite(tilt).all():
            raise InputError(f"{path}: {name} holds a value that is not a number (mrad)")
        if (tilt.abs() > MAX_BEAM_TILT_MRAD).any():
            raise InputError(f"{path}: {name} holds {tilt[tilt.abs().idxmax()]:g} mrad; expected a beam tilt within "
                             f"{MAX_BEAM_TILT_MRAD:g} mrad")
    _check_zernike_phases(table, path)
    if set(MAG_MATRIX) & set(table.columns):
        matrix = pd.DataFrame({c: table[c] if c in table.columns else float(c[-2] == c[-1]) for c in MAG_MATRIX})
        matrix = matrix.apply(pd.to_numeric, errors="coerce").fillna(0).drop_duplicates()
        m = matrix.to_numpy().reshape(-1, 2, 2)
        off = np.abs(np.linalg.svd(m, compute_uv=False) - 1).max(initial=0)  # scale and anisotropy
        if off > 1e-4:
            raise InputError(f"{path}: rlnMagMat00-11 hold a magnification correction of up to {100 * off:.2g} % "
                             "(RELION's CtfRefine), which multirefine does not model; remove those columns from "
                             "data_optics to use the images without it")


def aberration_reach_radians(coefficients: list[float], odd: bool, pixel_size_angstrom: float) -> float:
    """The largest phase (radians) RELION's odd or even Zernike ``coefficients`` make up to
    Nyquist at ``pixel_size_angstrom`` (inf where they overflow)."""
    from multirefine.fourier.aberrations import aberration_phase_2d

    phase = float(aberration_phase_2d(coefficients, odd, 16, pixel_size_angstrom).abs().max())
    return phase if np.isfinite(phase) else np.inf


def _check_zernike_phases(table: pd.DataFrame, path: str | Path) -> None:
    """Raise InputError where a Zernike list's phase reaches :data:`MAX_ABERRATION_RADIANS` by
    Nyquist (at the particles' pixel size): no aberration a microscope has, a damaged value."""
    apix = table[IMAGE_PIXEL_SIZE] if IMAGE_PIXEL_SIZE in table.columns else pd.Series(1.0, index=table.index)
    for name, odd in ((ZERNIKE[0], True), (ZERNIKE[1], False)):
        if name not in table.columns:
            continue
        for value, size in pd.DataFrame({"z": table[name].astype(str), "a": apix}).drop_duplicates().itertuples(
                index=False):
            phase = aberration_reach_radians(relion_list(value), odd, float(size))
            if not phase <= MAX_ABERRATION_RADIANS:
                raise InputError(f"{path}: {name} {value} makes a phase of {phase:.3g} rad by Nyquist at "
                                 f"{float(size):g} Å/px; expected one within {MAX_ABERRATION_RADIANS:g} rad")


def applied_optics(table: pd.DataFrame | None) -> list[str]:
    """The aberrations a table holds (optics, or particles with their groups' values), in words
    (empty: none): beam tilt, odd and even Zernike terms, applied as RELION applies them
    (:mod:`multirefine.fourier.aberrations`)."""
    if table is None:
        return []
    said = []
    if set(BEAM_TILT) & set(table.columns):
        tilt = np.hypot(*(pd.to_numeric(table[c], errors="coerce").fillna(0).to_numpy() if c in table.columns
                          else np.zeros(len(table)) for c in BEAM_TILT))
        if tilt.max(initial=0) > 0:
            said.append(f"beam tilt up to {tilt.max():.2g} mrad")
    for name, what in zip(ZERNIKE, ("odd", "even")):
        if name in table.columns and any(any(relion_list(v)) for v in pd.unique(table[name].dropna())):
            said.append(f"{what} Zernike terms")
    return said


def optics_note(table: pd.DataFrame | None, applied: bool = True) -> str:
    """The line that says which aberrations :func:`applied_optics` finds ("" where none), and
    whether they are applied (not in a run made before they were, continued as it ran)."""
    said = applied_optics(table)
    if not said:
        return ""
    return (f"optics applied as RELION 3.1 applies them: {', '.join(said)}" if applied else
            f"optics not applied (this run was made before they were, and goes on as it ran): {', '.join(said)}")
