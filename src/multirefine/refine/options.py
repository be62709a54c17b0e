"""A run's options (``0_refine_parms.json``) and their validation.

:class:`RefineOptions` holds every resolved option of ``multirefine refine`` (EMAN2's
``e2refinemulti`` names where they exist) and checks itself when made
(:meth:`RefineOptions.validate`), so a library or Dask caller of
:func:`multirefine.refine.driver.run_refinement` gets the same checks as the command line.
:class:`SweepSettings` is the little of them that a shard of particle rows needs (what
travels to a Dask worker with each task).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from multirefine.errors import InputError

__all__ = ["MAX_ITERATIONS", "MIN_ITERATIONS", "SEEDINGS", "SIGMA_ANG_DEG", "RefineOptions", "SweepSettings"]

SEEDINGS = ("models", "randphase", "mapfragment", "randclassify")
# The command line's --sigma_ang (degrees): local searches from poses 9.3 degrees (median) off the
# truth, adk_real, 4 iterations: no prior 91.1 %, 5 degrees 96.9 %, 2 degrees 98.7 % (BENCHMARKS.md,
# "Local searches from input poses"); RELION's local searches of 5 degrees are a sigma of 1.7.
SIGMA_ANG_DEG = 2.0
# Without --iter a run goes on until its assignment settles (multirefine.refine.driver.settled),
# at least MIN_ITERATIONS (the fixed default before) and at most MAX_ITERATIONS (RELION's Class3D
# default). Measured: the weak start reaches 84.9 % after 5 iterations, 90.6 % after 10, 96 %
# after 22; the conformational set 71 / 97 / 99.6 / 99.8 % after 4 / 6 / 8 / 12 (BENCHMARKS.md).
MIN_ITERATIONS, MAX_ITERATIONS = 5, 25
MAX_MASS_KDA = 1e5  # --mass: 100 MDa, beyond the largest particles imaged
MAX_KMAX = 20  # --kmax: each split costs rounds of classification of every particle


@dataclass
class RefineOptions:
    """Every resolved option of a run (written to ``0_refine_parms.json``)."""

    input: str
    path: str
    symmetries: list[str]  # one per model: their number is the number of models
    iterations: int = 5  # with until_settled: at most
    until_settled: bool = False  # stop once the assignment settles (the command line without --iter)
    usefilt: str | None = None
    targetres: float | None = None
    speed: int = 5
    sep: int = 1
    classiter: int = 0
    m3dkeep: float = 0.9
    classkeep: float = 0.85
    mass_kda: list[float] | None = None
    max_shift_px: float = 5.0
    shrink: int = 1
    batch_size: int = 500
    device: str = "cpu"
    align_maps: bool = True
    seed: int = 0
    score: str = "ls"
    soft: bool = False
    start_maps: list[str] = field(default_factory=list)
    seeding: str = "models"  # models: the maps given; else one map varied into K (multirefine.refine.seeding)
    apix: float | None = None  # --apix: the pixel size given, over the particle file's
    single: bool = True  # each model's particles refined on their own afterwards (--nosingle: not)
    single_iterations: int = 8
    single_start_resolution_angstrom: float = 30.0
    split_merge: bool = True  # --nosplitmerge: not (multirefine.refine.splitmerge)
    noise_model: str = "white"  # --noise: white, or coloured (multirefine.refine.noise)
    local_search: bool = False  # searches local around the input's poses, then the last iteration's
    junk_scale: float | None = None  # --junk F: particles fitting below F x the median intensity are junk
    normalise: bool = False  # --norm: each image's background plane and SD taken out as it is read
    fit_intensity: bool = False  # --scale: each particle's intensity scale (multirefine.refine.intensity)
    consensus: bool = False  # --consensus: all particles refined against the one map first (then local searches)
    # --sigma_ang: local searches weighted by a Gaussian prior of this SD (degrees); 0: none (a run
    # written before the prior existed resumes without it; the command line's default is SIGMA_ANG_DEG)
    sigma_ang_deg: float = 0.0
    # --hypotheses N: each particle's map entry spread over its N best distinct poses in its
    # model, weighted by their posteriors (0: its best pose alone, as runs written before it)
    hypotheses: int = 0
    masks: list[str] | None = None  # --mask: the files as given (the run folder keeps copies, mask_MM.mrc)
    particle_diameter_angstrom: float | None = None  # --particle-diameter; None: the radius estimated from the maps
    focus_mask: str | None = None  # --focusmask: the file as given (the run folder keeps a copy, focusmask.mrc)
    write_subtracted: bool = False  # --write-subtracted: the particles less the common outside, after the iterations
    kmax: int | None = None  # --nmodels auto: at most this many models, counted from the data; None: as given
    no_ctf: bool = False  # --no-ctf: the particles' CTF, if they have one, not applied
    write_lst: bool = False  # --lst: each model's particles also as an EMAN2 list, particles_model_MM.lst
    aberrations: bool = True  # beam tilt and Zernike terms applied (False: a run made before they were)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_models(self) -> int:
        return len(self.symmetries)

    def validate(self) -> None:
        """Raise :class:`~multirefine.errors.InputError` naming the option of a value out of
        range (the command line's names)."""
        if self.iterations < 1:
            raise InputError(f"--iter {self.iterations}: expected 1 or more")
        if self.single_iterations < 1:
            raise InputError(f"--singleiter {self.single_iterations}: expected 1 or more")
        if not self.single_start_resolution_angstrom > 0:
            raise InputError(f"--singleres {self.single_start_resolution_angstrom}: expected a resolution in Å")
        for name in ("m3dkeep", "classkeep"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise InputError(f"--{name} {value}: expected a fraction in (0, 1]")
        if self.sep < 1:
            raise InputError(f"--sep {self.sep}: expected 1 or more")
        if self.sep > 1 and self.soft:
            raise InputError(f"--sep {self.sep} with --soft: --sep spreads a hard assignment; use one of them")
        if self.hypotheses < 0:
            raise InputError(f"--hypotheses {self.hypotheses}: expected 0 (the best pose alone) or more")
        if self.hypotheses > 1 and (self.sep > 1 or self.score != "ls"):
            raise InputError(f"--hypotheses {self.hypotheses} with " + ("--sep" if self.sep > 1 else f"--score {self.score}")
                             + ": the poses' weights are posteriors of the ls score; use --sep 1 and --score ls")
        if self.classiter < 0:
            raise InputError(f"--classiter {self.classiter}: expected 0 or more")
        if self.seeding not in SEEDINGS:
            raise InputError(f"seeding {self.seeding!r}: expected one of {', '.join(SEEDINGS)}")
        if self.noise_model not in ("white", "coloured"):
            raise InputError(f"--noise {self.noise_model}: expected white or coloured")
        if self.junk_scale is not None and not 0 < self.junk_scale < 1:
            raise InputError(f"--junk {self.junk_scale}: expected a fraction of the median intensity in (0, 1)")
        if self.consensus and self.seeding == "models" and len(self.start_maps) > 1:
            raise InputError("--consensus refines all particles against one map: give --model (one map), not --models")
        if not 0 <= self.sigma_ang_deg <= 60:
            raise InputError(f"--sigma_ang {self.sigma_ang_deg}: expected degrees in [0, 60] (0: no prior)")
        if self.sigma_ang_deg > 0 and self.score != "ls":
            raise InputError(f"--sigma_ang with --score {self.score}: a pose prior needs the ls score (or --sigma_ang 0)")
        if self.mass_kda is not None and len(self.mass_kda) != self.n_models:
            raise InputError(f"--mass: {len(self.mass_kda)} masses for {self.n_models} models")
        if self.mass_kda is not None and not all(math.isfinite(m) and 0 < m <= MAX_MASS_KDA for m in self.mass_kda):
            raise InputError(f"--mass {','.join(f'{m:g}' for m in self.mass_kda)}: expected kDa, more than 0 and "
                             f"at most {MAX_MASS_KDA:g}")
        if not 1 <= self.speed <= 10:
            raise InputError(f"--speed {self.speed}: expected 1 (fine angular steps) to 10 (coarse)")
        if self.shrink < 1:
            raise InputError(f"--shrink {self.shrink}: expected 1 or more")
        if self.targetres is not None and not (math.isfinite(self.targetres) and self.targetres > 0):
            raise InputError(f"--targetres {self.targetres}: expected a resolution in Å")
        if self.masks is not None and len(self.masks) not in (1, self.n_models):
            raise InputError(f"--mask {','.join(self.masks)}: {len(self.masks)} masks for {self.n_models} models (give "
                             "one, or one per model)")
        if self.focus_mask is not None and self.score != "ls":
            raise InputError(f"--focusmask with --score {self.score}: focused classification subtracts signal, which "
                             "needs the ls score")
        if self.write_subtracted and (self.focus_mask is None or self.normalise):
            raise InputError("--write-subtracted " + ("needs --focusmask (the region kept)" if self.focus_mask is None
                                                      else "with --norm is not supported yet (the images are "
                                                      "written as read, the maps are in the normalised ones' units)"))
        if self.particle_diameter_angstrom is not None and not (
                math.isfinite(self.particle_diameter_angstrom) and self.particle_diameter_angstrom > 0):
            raise InputError(f"--particle-diameter {self.particle_diameter_angstrom}: expected a diameter in Å")
        if self.kmax is not None:
            self._validate_count()
        if not (math.isfinite(self.max_shift_px) and self.max_shift_px >= 0):
            raise InputError(f"--max-shift {self.max_shift_px}: expected pixels, 0 or more")
        if not 0 <= self.seed < 2**32:
            raise InputError(f"--seed {self.seed}: expected 0 to 2^32 - 1")

    def _validate_count(self) -> None:
        """``--nmodels auto``: one starting map, one symmetry, mask and mass for every model
        (the models are made from the data, :func:`multirefine.refine.driver.count_models`)."""
        if not 2 <= self.kmax <= MAX_KMAX:
            raise InputError(f"--kmax {self.kmax}: expected 2 to {MAX_KMAX}")
        if self.n_models > self.kmax:
            raise InputError(f"--kmax {self.kmax}: fewer than the {self.n_models} models")
        if len(set(self.symmetries)) > 1 or (self.masks and len(self.masks) > 1) or len(self.start_maps) > 1:
            raise InputError("--nmodels auto makes every model from one --model, with one --sym and one --mask for all")
        if self.mass_kda is not None and len(set(self.mass_kda)) > 1:
            raise InputError("--nmodels auto with --mass: give one mass, for every model")
        if self.focus_mask is not None:
            raise InputError("--nmodels auto with --focusmask is not supported yet: count the models first, then run "
                             "the focused classification with --nmodels K")


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep over particle rows needs of the options."""

    batch_size: int
    device: str
    score: str
    sep: int = 1
    sigma_ang_deg: float | None = None  # local searches: the pose prior's SD (None: no prior)
    hypotheses: int = 0  # --hypotheses: the distinct poses kept per particle (0: the best)

    @classmethod
    def of(cls, opts: RefineOptions) -> SweepSettings:
        return cls(opts.batch_size, opts.device, opts.score, opts.sep,
                   opts.sigma_ang_deg if opts.local_search and opts.sigma_ang_deg > 0 else None,
                   opts.hypotheses if opts.hypotheses > 1 else 0)
