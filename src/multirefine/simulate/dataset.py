"""Simulated particle stacks: the parameters, what is drawn per particle, the images and
the files (the package docstring, :mod:`multirefine.simulate`, says what is simulated)."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multirefine.errors import InputError
from multirefine.fourier.aberrations import shift_phases
from multirefine.fourier.ctf import calculate_ctf_2d
from multirefine.fourier.fft import (
    irfft2_centered,
    rfft2_centered,
)
from multirefine.fourier.projection import extract_central_slices, prepare_volume_ft
from multirefine.fourier.shift import shift_images_ft
from multirefine.geometry.euler import euler_to_matrix
from multirefine.refine.batch import aberrations_for_rows
from multirefine.simulate.noise import (
    check_noise_table,
    noise_power_shape,
    read_noise_spectrum,
    spectrum_error,
)

__all__ = ["JUNK_KINDS", "TRUTH_COLUMNS", "SimulationParameters", "difference_mask", "simulate_dataset"]

JUNK_KINDS = ("empty", "blobs", "fragment")

# The per-particle truth without a RELION name (written to truth.star only, when drawn).
TRUTH_COLUMNS = {
    "mrContrastScale": "factor multiplying the particle's signal (mean 1)",
    "mrBackgroundOffset": "constant added to the image, in noise SDs",
    "mrBackgroundRampX": "background change across the box width along x (columns), in noise SDs",
    "mrBackgroundRampY": "background change across the box height along y (rows), in noise SDs",
    "mrJunkKind": "none (a particle), or the junk's kind: empty, blobs, fragment",
    "mrFragmentPiece": "the piece a fragment shows (1, 2, ..: simulation.json's junk_fragment_pieces); 0: none",
    "mrBlobCount": "number of Gaussian blobs in an aggregate (0: not blobs)",
}

# Random streams of the optional draws, apart from the pose/CTF stream and the noise.
_STREAM_CONTRAST, _STREAM_BACKGROUND, _STREAM_JUNK = 101, 102, 103
# Broken particles show at most this many pieces (each held as a prepared transform, as
# much memory as one class's map: 270 MB at a box of 128).
_FRAGMENT_PIECES = 4


@dataclass
class SimulationParameters:
    """Everything that defines a simulated data set (written to ``simulation.json``).

    Checks itself on construction: a value that cannot be used is an :class:`InputError`
    naming the ``multirefine simulate`` option that sets it. ``noise_sigma`` and the
    ``noise_*`` lists are filled in by :func:`simulate_dataset`.
    """

    n_particles: int
    snr: float
    fractions: list[float]
    pixel_size_angstrom: float
    seed: int = 0
    defocus_min_angstrom: float = 10000.0
    defocus_max_angstrom: float = 25000.0
    astigmatism_max_angstrom: float = 500.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    max_shift_px: float = 3.0
    noise_sigma: float = field(default=0.0)  # in map units; images are divided by it
    # B-factor envelope exp(-B k^2 / 4) on the signal's amplitude (k in 1/Å).
    bfactor_angstrom2: float = 0.0
    # "white", "falloff:CORNER_A,FLOOR[,EXPONENT]" or a text file (see noise_power_shape).
    noise_spectrum: str = "white"
    noise_spectrum_table: list[list[float]] = field(default_factory=list)  # the file's rows
    # Expected noise power per shell i (pixels with round(|k|) = i cycles per box, i = 0 .. D/2)
    # of the written images: E|F(k)|^2 / D^2 for the plain DFT F, so white noise is 1 everywhere.
    noise_shell_frequency_per_angstrom: list[float] = field(default_factory=list)
    noise_power_per_shell: list[float] = field(default_factory=list)
    contrast_sd: float = 0.0
    background_sd_noise_sigmas: float = 0.0
    ramp_sd_noise_sigmas_per_box: float = 0.0
    junk_fraction: float = 0.0
    junk_kind_weights: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(JUNK_KINDS, 1.0)
    )
    # The pieces broken particles show (drawn): class, unit normal (x, y, z) and offset in px
    # from the box centre of the plane; the side the normal points to is kept.
    junk_fragment_pieces: list[dict] = field(default_factory=list)
    # Optics: beam tilt (x, y) in mrad and RELION's odd and even Zernike coefficients
    # (multirefine.fourier.aberrations), written to data_optics as RELION's CtfRefine writes them.
    beam_tilt_mrad: list[float] = field(default_factory=lambda: [0.0, 0.0])
    odd_zernike: list[float] = field(default_factory=list)
    even_zernike: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        def finite(value: float) -> bool:
            return isinstance(value, numbers.Real) and math.isfinite(value)

        if not (finite(self.snr) and self.snr > 0):
            raise InputError(f"--snr {self.snr}: expected a positive number (the signal to noise variance ratio)")
        if not (finite(self.pixel_size_angstrom) and self.pixel_size_angstrom > 0):
            raise InputError(f"--apix {self.pixel_size_angstrom}: expected a positive number of Å per pixel")
        fractions = list(self.fractions)
        if not fractions or not all(finite(f) and f >= 0 for f in fractions) or sum(fractions) <= 0:
            shown = ",".join(map(str, fractions))
            raise InputError(f"--fractions {shown}: expected non-negative numbers, not all 0")
        if not (finite(self.defocus_min_angstrom) and finite(self.defocus_max_angstrom)
                and 0 < self.defocus_min_angstrom <= self.defocus_max_angstrom):
            raise InputError(
                f"--defocus {self.defocus_min_angstrom / 1e4:g},{self.defocus_max_angstrom / 1e4:g}: "
                "expected MIN,MAX in µm with 0 < MIN <= MAX"
            )
        for option, value in (
            ("--bfactor", self.bfactor_angstrom2),
            ("--contrast-sd", self.contrast_sd),
            ("--background-sd", self.background_sd_noise_sigmas),
            ("--ramp-sd", self.ramp_sd_noise_sigmas_per_box),
        ):
            if not (finite(value) and value >= 0):
                raise InputError(f"{option} {value}: expected a number >= 0")
        if not (finite(self.junk_fraction) and 0 <= self.junk_fraction < 1):
            raise InputError(f"--junk {self.junk_fraction}: expected a fraction, 0 <= F < 1")
        weights = self.junk_kind_weights
        if (set(weights) != set(JUNK_KINDS) or not all(finite(w) and w >= 0 for w in weights.values())
                or sum(weights.values()) <= 0):
            shown = ",".join(str(weights.get(k, "?")) for k in JUNK_KINDS)
            raise InputError(
                f"--junk-mix {shown}: expected 3 non-negative shares ({', '.join(JUNK_KINDS)}), not all 0"
            )
        for option, values in (("--beamtilt", self.beam_tilt_mrad), ("--odd-zernike", self.odd_zernike),
                               ("--even-zernike", self.even_zernike)):
            if not all(finite(v) for v in values) or (option == "--beamtilt" and len(values) != 2):
                raise InputError(f"{option} {','.join(map(str, values))}: expected "
                                 + ("X,Y in mrad" if option == "--beamtilt" else "numbers (RELION's coefficients)"))
        self._check_optics_reach()
        if not self.noise_spectrum_table:
            self.noise_spectrum_table = read_noise_spectrum(self.noise_spectrum)
        else:
            check_noise_table(self.noise_spectrum_table, self.noise_spectrum)

    def _check_optics_reach(self) -> None:
        """Beam tilt and Zernike terms within what a microscope has, as a STAR file's must be
        (:func:`multirefine.io.columns.check_optics`)."""
        from multirefine.io.columns import (
            MAX_ABERRATION_RADIANS,
            MAX_BEAM_TILT_MRAD,
            aberration_reach_radians,
        )

        if max(map(abs, self.beam_tilt_mrad)) > MAX_BEAM_TILT_MRAD:
            raise InputError(f"--beamtilt {','.join(map(str, self.beam_tilt_mrad))}: expected a beam tilt within "
                             f"{MAX_BEAM_TILT_MRAD:g} mrad")
        for option, values, odd in (("--odd-zernike", self.odd_zernike, True),
                                    ("--even-zernike", self.even_zernike, False)):
            reach = aberration_reach_radians(values, odd, self.pixel_size_angstrom)
            if values and not reach <= MAX_ABERRATION_RADIANS:
                raise InputError(f"{option} {','.join(map(str, values))}: a phase of {reach:.3g} rad by Nyquist at "
                                 f"{self.pixel_size_angstrom:g} Å/px; expected one within {MAX_ABERRATION_RADIANS:g}")


def _noise_filter(params: SimulationParameters, box_size: int) -> torch.Tensor | None:
    """Amplitude filter ``(D, D//2+1)`` that colours unit white noise to the spectrum while
    keeping its variance (the mean of the squared filter over the full D x D grid is 1), or
    ``None`` for white noise. Records the per-shell power in ``params``."""
    ky = np.fft.fftfreq(box_size, 1.0 / box_size)
    radius = np.hypot(ky[None, :], ky[:, None])  # full grid, cycles per box
    shell = np.rint(radius).astype(np.int64)
    nyquist = box_size // 2
    params.noise_shell_frequency_per_angstrom = [
        i / (box_size * params.pixel_size_angstrom) for i in range(nyquist + 1)
    ]
    if params.noise_spectrum == "white":
        params.noise_power_per_shell = [1.0] * (nyquist + 1)
        return None
    table = np.asarray(params.noise_spectrum_table)
    if table.size and table.shape[1] == 1 and len(table) < nyquist + 1:
        raise spectrum_error(
            params.noise_spectrum,
            f"{len(table)} shells, expected at least {nyquist + 1} for a box of {box_size}",
        )
    power = noise_power_shape(params, radius / (box_size * params.pixel_size_angstrom), box_size)
    if power.mean() <= 0:
        raise spectrum_error(params.noise_spectrum, f"no noise power in a box of {box_size}")
    power = power / power.mean()
    params.noise_power_per_shell = [float(power[shell == i].mean()) for i in range(nyquist + 1)]
    half = np.sqrt(power[:, : box_size // 2 + 1])
    return torch.from_numpy(half.astype(np.float32))


def _draw_truth(params: SimulationParameters, box_size: int, rng: np.random.Generator) -> pd.DataFrame:
    """Per-particle truth: class, pose, origin, CTF, in RELION's columns."""
    n = params.n_particles
    fractions = np.asarray(params.fractions, dtype=np.float64)
    classes = rng.choice(len(fractions), size=n, p=fractions / fractions.sum()) + 1
    # Uniform rotations: rot, psi uniform, cos(tilt) uniform.
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    # Displacement uniform in a disc of radius max_shift_px; origin = -displacement.
    radius = params.max_shift_px * np.sqrt(rng.uniform(0, 1, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    displacement = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    defocus_u = rng.uniform(params.defocus_min_angstrom, params.defocus_max_angstrom, n)
    defocus_v = defocus_u - rng.uniform(0, params.astigmatism_max_angstrom, n)
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnDefocusU": defocus_u,
            "rlnDefocusV": defocus_v,
            "rlnDefocusAngle": rng.uniform(0, 180, n),
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.zeros(n),
            "rlnVoltage": np.full(n, params.voltage_kv),
            "rlnSphericalAberration": np.full(n, params.cs_mm),
            "rlnAmplitudeContrast": np.full(n, params.amplitude_contrast),
            "rlnImagePixelSize": np.full(n, params.pixel_size_angstrom),
            "rlnClassNumber": classes,
            "rlnAngleRot": rot,
            "rlnAngleTilt": tilt,
            "rlnAnglePsi": psi,
            "rlnOriginXAngst": -displacement[:, 0] * params.pixel_size_angstrom,
            "rlnOriginYAngst": -displacement[:, 1] * params.pixel_size_angstrom,
            **_optics_columns(params, n),
        }
    )


def _optics_columns(params: SimulationParameters, n: int) -> dict[str, object]:
    """The aberration columns the parameters ask for (none where they ask for none)."""
    columns: dict[str, object] = {}
    if any(params.beam_tilt_mrad):
        columns.update(rlnBeamTiltX=np.full(n, float(params.beam_tilt_mrad[0])),
                       rlnBeamTiltY=np.full(n, float(params.beam_tilt_mrad[1])))
    for name, values in (("rlnOddZernike", params.odd_zernike), ("rlnEvenZernike", params.even_zernike)):
        if any(values):
            columns[name] = ["[" + ",".join(f"{v:.9g}" for v in values) + "]"] * n
    return columns


def _draw_realism(params: SimulationParameters, truth: pd.DataFrame, box_size: int) -> dict[int, np.ndarray]:
    """Add the optional per-particle draws to ``truth`` (columns of :data:`TRUTH_COLUMNS`, only
    for what is turned on; junk rows get ``rlnClassNumber`` 0). Returns each aggregate's blobs
    by row: ``(m, 4)`` arrays of x, y (px from the box centre), sigma (px) and weight."""
    n = len(truth)
    if params.contrast_sd > 0:
        rng = np.random.default_rng([params.seed, _STREAM_CONTRAST])
        # Gamma with mean 1 and the SD asked for: always positive, unlike a clipped normal.
        variance = params.contrast_sd**2
        truth["mrContrastScale"] = rng.gamma(1 / variance, variance, n)
    if params.background_sd_noise_sigmas > 0 or params.ramp_sd_noise_sigmas_per_box > 0:
        rng = np.random.default_rng([params.seed, _STREAM_BACKGROUND])
        truth["mrBackgroundOffset"] = rng.normal(0, params.background_sd_noise_sigmas, n)
        ramp = rng.normal(0, params.ramp_sd_noise_sigmas_per_box, (n, 2))
        truth["mrBackgroundRampX"] = ramp[:, 0]
        truth["mrBackgroundRampY"] = ramp[:, 1]
    blobs: dict[int, np.ndarray] = {}
    if params.junk_fraction <= 0:
        return blobs
    rng = np.random.default_rng([params.seed, _STREAM_JUNK])
    rows = np.sort(rng.choice(n, min(round(params.junk_fraction * n), n - 1), replace=False))
    weights = np.array([params.junk_kind_weights[k] for k in JUNK_KINDS], dtype=np.float64)
    drawn = rng.choice(len(JUNK_KINDS), len(rows), p=weights / weights.sum())
    kinds = np.asarray(JUNK_KINDS, dtype=object)[drawn]
    kind = np.full(n, "none", dtype=object)
    kind[rows] = kinds
    fragment = rows[kinds == "fragment"]
    piece = np.zeros(n, dtype=np.int64)
    params.junk_fragment_pieces = []
    if len(fragment):
        fractions = np.asarray(params.fractions, dtype=np.float64)
        for _ in range(min(_FRAGMENT_PIECES, len(fragment))):
            normal = rng.normal(size=3)
            params.junk_fragment_pieces.append({
                "class": int(rng.choice(len(fractions), p=fractions / fractions.sum())) + 1,
                "normal_xyz": (normal / np.linalg.norm(normal)).tolist(),
                "offset_px": float(rng.uniform(-0.1, 0.1) * box_size),
            })
        piece[fragment] = rng.integers(1, len(params.junk_fragment_pieces) + 1, len(fragment))
    blob_count = np.zeros(n, dtype=np.int64)
    for row in rows[kinds == "blobs"]:
        m = int(rng.integers(2, 7))
        xy = np.clip(rng.normal(0, box_size / 10, (m, 2)), -box_size / 4, box_size / 4)
        sigma = rng.uniform(box_size / 32, box_size / 12, m)
        blobs[int(row)] = np.column_stack([xy, sigma, rng.uniform(0.5, 1.5, m)])
        blob_count[row] = m
    truth.loc[rows, "rlnClassNumber"] = 0
    truth["mrJunkKind"] = kind
    truth["mrFragmentPiece"] = piece
    truth["mrBlobCount"] = blob_count
    return blobs


def _image_coordinates(box_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``, each ``(D, D)`` float64, in px from the box centre ``D//2``."""
    axis = torch.arange(box_size, dtype=torch.float64) - box_size // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def _fragment_pieces_ft(maps: list[np.ndarray], pieces: list[dict]) -> torch.Tensor | None:
    """The pieces' prepared half volumes (:func:`prepare_volume_ft`), or ``None``."""
    if not pieces:
        return None
    size = maps[0].shape[-1]
    axis = torch.arange(size, dtype=torch.float64) - size // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    volumes = []
    for piece in pieces:
        nx, ny, nz = piece["normal_xyz"]
        distance = (x * nx + y * ny + z * nz - piece["offset_px"]).clamp(-1, 1)
        mask = 0.5 + 0.5 * torch.sin(0.5 * math.pi * distance)  # a 2 px cosine edge
        volumes.append(torch.as_tensor(maps[piece["class"] - 1], dtype=torch.float64) * mask)
    return prepare_volume_ft(torch.stack(volumes))


def _render_blobs(blobs: np.ndarray, box_size: int) -> torch.Tensor:
    """Gaussian blobs ``(m, 4)`` (x, y, sigma, weight) as an image ``(D, D)``."""
    x, y = _image_coordinates(box_size)
    image = torch.zeros((box_size, box_size), dtype=torch.float64)
    for bx, by, sigma, weight in blobs:
        image += weight * torch.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * sigma**2))
    return image.float()


def _clean_images(
    volumes_ft: torch.Tensor,
    truth: pd.DataFrame,
    box_size: int,
    bfactor_angstrom2: float = 0.0,
    blobs: dict[int, np.ndarray] | None = None,
    pieces_ft: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise-free images ``(n, D, D)`` for the rows of ``truth``, in map units: each particle's
    projection, a fragment's piece's projection (``pieces_ft``), an aggregate's blobs
    (``blobs``, by row), nothing for an empty box; shifted, times the CTF and the envelope
    ``exp(-B k^2 / 4)``. Not yet scaled by the contrast factor, nor aggregates to their
    variance."""
    col = lambda name: torch.tensor(truth[name].to_numpy(dtype=np.float64))
    rotations = euler_to_matrix(col("rlnAngleRot"), col("rlnAngleTilt"), col("rlnAnglePsi")).float()
    classes = truth["rlnClassNumber"].to_numpy() - 1
    ft = torch.zeros((len(truth), box_size, box_size // 2 + 1), dtype=torch.complex64)
    for k in np.unique(classes):
        if k < 0:  # junk
            continue
        sel = torch.from_numpy(np.nonzero(classes == k)[0])
        ft[sel] = extract_central_slices(volumes_ft[k], rotations[sel], box_size)
    if "mrFragmentPiece" in truth.columns:
        pieces = truth["mrFragmentPiece"].to_numpy() - 1  # -1: not a fragment
        for k in np.unique(pieces[pieces >= 0]):
            assert pieces_ft is not None, "fragments need their pieces"
            sel = torch.from_numpy(np.nonzero(pieces == k)[0])
            ft[sel] = extract_central_slices(pieces_ft[k], rotations[sel], box_size)
    for i, row in enumerate(truth.index):
        if blobs and row in blobs:
            ft[i] = rfft2_centered(_render_blobs(blobs[row], box_size))
    apix = col("rlnImagePixelSize")
    displacement = -torch.stack([col("rlnOriginXAngst"), col("rlnOriginYAngst")], 1) / apix[:, None]
    ft = shift_images_ft(ft, displacement)
    bfactor = col("rlnCtfBfactor")
    if bfactor_angstrom2:
        bfactor = bfactor + bfactor_angstrom2
    odd, even = aberrations_for_rows(truth, box_size)
    ctf = calculate_ctf_2d(
        gamma_offset=even,
        defocus_u_angstrom=col("rlnDefocusU"),
        defocus_v_angstrom=col("rlnDefocusV"),
        defocus_angle_deg=col("rlnDefocusAngle"),
        voltage_kv=col("rlnVoltage"),
        cs_mm=col("rlnSphericalAberration"),
        amplitude_contrast=col("rlnAmplitudeContrast"),
        pixel_size_angstrom=apix,
        phase_shift_deg=col("rlnPhaseShift"),
        bfactor_angstrom2=bfactor,
        box_size=box_size,
    )
    if odd is not None:  # what the odd aberrations do to an image: its phases shifted
        ctf = shift_phases(ctf, odd)
    return irfft2_centered(ft * ctf, box_size)


def _scale_signal(images: torch.Tensor, truth: pd.DataFrame, particle_variance: float) -> None:
    """In place: aggregates to the mean variance of a clean particle image, then every row by
    its contrast factor."""
    if "mrJunkKind" in truth.columns:
        blob_rows = torch.from_numpy(np.nonzero(truth["mrJunkKind"].to_numpy() == "blobs")[0])
        if len(blob_rows):
            variance = images[blob_rows].var(dim=(-2, -1))
            images[blob_rows] *= torch.sqrt(particle_variance / variance)[:, None, None]
    if "mrContrastScale" in truth.columns:
        images *= torch.tensor(truth["mrContrastScale"].to_numpy(), dtype=images.dtype)[:, None, None]


def _background(truth: pd.DataFrame, box_size: int) -> torch.Tensor:
    """Each row's offset and ramp ``(n, D, D)``, in noise SDs."""
    x, y = _image_coordinates(box_size)
    col = lambda name: torch.tensor(truth[name].to_numpy(dtype=np.float64))[:, None, None]
    ramp = (col("mrBackgroundRampX") * x + col("mrBackgroundRampY") * y) / box_size
    return (col("mrBackgroundOffset") + ramp).float()


def difference_mask(maps: list[np.ndarray], level: float = 0.25, extend_px: float = 2.0,
                    soft_px: float = 3.0) -> np.ndarray | None:
    """A soft mask ``(D, D, D)`` around where the true maps differ (a focus mask for
    ``refine --focusmask``): each voxel's largest departure from the maps' mean, thresholded at
    ``level`` of its peak, grown by ``extend_px`` and given a ``soft_px`` edge
    (:func:`multirefine.fourier.masks.mask_from_map`). None for one map, or maps all alike."""
    from multirefine.fourier.masks import mask_from_map

    if len(maps) < 2:
        return None
    stacked = torch.stack([torch.as_tensor(np.asarray(m), dtype=torch.float32) for m in maps])
    departure = (stacked - stacked.mean(0)).abs().amax(0)
    peak = float(departure.max())
    if not peak > 1e-6 * float(stacked.abs().max()):
        return None
    return mask_from_map(departure, level * peak, extend_px, soft_px).numpy().astype(np.float32)


def simulate_dataset(
    out_dir: str | Path,
    maps: list[np.ndarray],
    params: SimulationParameters,
    batch_size: int = 1000,
    progress=None,
) -> pd.DataFrame:
    """Write a simulated data set to ``out_dir`` and return its truth table.

    Writes ``particles.mrcs``, ``particles.star`` (what a user would have: CTF, no poses,
    classes or other truth), ``truth.star`` (plus ``rlnClassNumber``, 0 for junk, angles,
    origins and the ``mr`` columns of :data:`TRUTH_COLUMNS` that were drawn), ``gt_NN.mrc``
    (``NN`` = class number, from 01), ``difference_mask.mrc`` (where the true maps differ:
    :func:`difference_mask`; with two maps or more) and ``simulation.json``. Particles are generated in
    batches, so the stack is never held in memory whole.
    """
    from multirefine.io.maps import MrcStackWriter, write_map
    from multirefine.io.star import write_particles_star

    if len(maps) != len(params.fractions):
        raise InputError(f"{len(maps)} maps but {len(params.fractions)} fractions")
    if params.snr <= 0:
        raise InputError(f"--snr {params.snr}: expected a positive signal-to-noise ratio")
    box_size = maps[0].shape[-1]
    noise_filter = _noise_filter(params, box_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(params.seed)
    volumes_ft = torch.stack([prepare_volume_ft(torch.as_tensor(m)) for m in maps])
    truth = _draw_truth(params, box_size, rng)
    blobs = _draw_realism(params, truth, box_size)
    pieces_ft = _fragment_pieces_ft(maps, params.junk_fragment_pieces)
    # Noise level from the mean variance of clean images over a pilot sample (of particles,
    # not junk; with their contrast factors).
    particles = truth if params.junk_fraction == 0 else truth[truth["rlnClassNumber"] > 0]
    pilot = particles.sample(n=min(len(particles), 500), random_state=params.seed)
    variances = _clean_images(volumes_ft, pilot, box_size, params.bfactor_angstrom2).var(dim=(-2, -1))
    particle_variance = float(variances.mean())
    signal_variance = particle_variance
    if "mrContrastScale" in pilot.columns:
        scale = torch.tensor(pilot["mrContrastScale"].to_numpy())
        signal_variance = float((variances.double() * scale**2).mean())
    params.noise_sigma = math.sqrt(signal_variance / params.snr)
    noise_rng = torch.Generator().manual_seed(params.seed + 1)
    with MrcStackWriter(out / "particles.mrcs", len(truth), box_size, params.pixel_size_angstrom) as writer:
        for start in range(0, len(truth), batch_size):
            rows = truth.iloc[start : start + batch_size]
            images = _clean_images(
                volumes_ft, rows, box_size, params.bfactor_angstrom2, blobs, pieces_ft
            )
            _scale_signal(images, rows, particle_variance)
            noise = torch.randn(images.shape, generator=noise_rng)
            if noise_filter is not None:
                noise = irfft2_centered(rfft2_centered(noise) * noise_filter, box_size)
            images += params.noise_sigma * noise
            images /= params.noise_sigma  # unit noise variance, as relion_preprocess --norm
            if "mrBackgroundOffset" in rows.columns:
                images += _background(rows, box_size)
            writer.write(start, images.numpy())
            if progress is not None:
                progress(len(rows))
    truth_only = ("rlnAngle", "rlnOrigin", "rlnClass", "mr")
    user_columns = [c for c in truth.columns if not c.startswith(truth_only)]
    write_particles_star(out / "particles.star", truth[user_columns])
    write_particles_star(out / "truth.star", truth)
    for k, volume in enumerate(maps, start=1):
        write_map(out / f"gt_{k:02d}.mrc", volume, params.pixel_size_angstrom)
    difference = difference_mask(maps)
    if difference is not None:
        write_map(out / "difference_mask.mrc", difference, params.pixel_size_angstrom)
    (out / "simulation.json").write_text(json.dumps(asdict(params), indent=2) + "\n")
    return truth
