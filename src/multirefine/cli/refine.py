"""Refine K maps at once from one particle stack (EMAN2's e2refinemulti options).

Every iteration assigns each particle to the model and orientation it matches best,
reconstructs each model from its particles (CTF-corrected, gold-standard half-sets,
symmetry imposed) and writes the run folder (--path, default the next free multi_NN):
threed_II_MM.mrc, particles_II.star, fsc_II.json, convergence.json,
0_refine_parms.json, the report index.html and, at the end, particles_model_MM.star per
model (without --iter, until the assignment settles: see --iter). Then each model's
particles are refined on their own, gold standard (independent half-sets, each aligned to
its own half map), into model_MM/: threed_final.mrc, half1_unfil.mrc, half2_unfil.mrc,
particles_final.star (--nosingle: not).

With three or more models, a split and merge trial (iteration 3 and every other one after
it, not in the last two) merges the most redundant model into the others and re-seeds it
from half of the largest, and keeps that where the cross-validated likelihood grows: a
random start that put one state in two models and two states in one leaves that way
(--nosplitmerge: no trials).

A run that stopped (a crash, a killed job, or one that wants more iterations) goes on with
--continue RUN: from its last finished iteration, with the options it was started with
(state.npz, 0_refine_parms.json); the result is the one an uninterrupted run gives. Only
--iter, --single, --nosingle, --singleiter, --singleres, --parallel (--j), --device and
--lowmem may change. A model refined on its own before is kept if nothing it depends on changed.

examples:
  multirefine refine --input particles.star --models a.mrc,b.mrc --iter 5
  multirefine refine --input particles.star --model consensus.mrc --nmodels 2
  multirefine refine --continue multi_01 --iter 8
  multirefine refine --continue multi_02 --single     (a --nosingle run: now each model on its own)
  e2refinemulti --input sets/all.lst --models m1.hdf,m2.hdf --sym c1,c2 --mass 200,250 --apix 1.5
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
from contextlib import closing, redirect_stdout
from dataclasses import asdict
from pathlib import Path

from multirefine.cli.continuation import resolve_continue
from multirefine.cli.machine import batch_size, device_and_threads
from multirefine.cli.masks import read_masks, saved_masks, write_masks, write_subtracted
from multirefine.errors import InputError

log = logging.getLogger(__name__)

MIN_PARTICLES_PER_MODEL = 10  # two half-sets of 5: below that a model's FSC means nothing


def add_args(parser: argparse.ArgumentParser) -> None:
    from multirefine.refine.options import MAX_ITERATIONS, MIN_ITERATIONS

    p = parser
    p.add_argument("--input", help="particles: RELION STAR, cryoSPARC .cs, EMAN2 .lst/.hdf, .mrcs (needed unless --continue)")
    p.add_argument("--models", help="starting maps, comma-separated, or one file holding K maps")
    p.add_argument("--model", help="one starting map, varied into --nmodels seeds")
    p.add_argument("--nmodels", type=int, default=2, help="number of models made from --model (default 2)")
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--randphase", action="store_true", help="seed: phases randomised beyond a low resolution")
    seed.add_argument("--mapfragment", action="store_true", help="seed: a random part of the map removed")
    seed.add_argument("--randclassify", action="store_true", help="seed: particles aligned to the one map, then "
                      "split at random (RELION's Class3D seeding; the default)")
    p.add_argument("--sym", default="c1", help="symmetry for all models, or one per model (c1,c2,...)")
    _add_mask_options(p)
    p.add_argument("--iter", type=int,
                   help=f"iterations (default: until fewer than 1 %% of the particles change model in two iterations "
                        f"running and the resolution stops improving; at least {MIN_ITERATIONS}, at most {MAX_ITERATIONS})")
    p.add_argument("--path", help="run folder (default: the next free multi_NN)")
    p.add_argument("--mass", help="molecular mass in kDa, one or one per model: threshold 1 encloses it")
    p.add_argument("--apix", type=float, help="pixel size in Å (overrides the particle file)")
    p.add_argument("--usefilt", help="a filtered stack, 1:1 with --input, used for the search only")
    p.add_argument("--targetres", type=float, help="search resolution in Å (default: automatic, from the FSC)")
    p.add_argument("--speed", type=int, default=5, help="1 (fine angular steps) .. 10 (coarse); default 5")
    p.add_argument("--sep", type=int, default=1, help="each particle goes into its N best orientations of its model, weight 1/N (default 1)")
    p.add_argument("--hypotheses", type=int, default=0, metavar="N",
                   help="each particle goes into its N best distinct orientations of its model (each global candidate "
                   "refined on its own), weighted by their posteriors, as RELION marginalises over poses (default 0: its best)")
    p.add_argument("--classkeep", type=float, default=0.85, help="fraction of particles kept in class averages")
    p.add_argument("--classiter", type=int, default=0, help="rounds of re-aligning particles to their class average (default 0)")
    p.add_argument("--m3dkeep", type=float, default=0.9, help="fraction of each model's particles in its map (default 0.9)")
    p.add_argument("--shrink", type=int, default=1, help="limit the search to the band a box shrunk by N would hold")
    p.add_argument("--nosingle", action="store_true", help="stop after the multi-model iterations (default: then "
                   "refine each model's particles on their own, gold standard, into model_MM/)")
    p.add_argument("--single", action="store_true",
                   help="refine each model's particles on their own afterwards: the default; with --continue, "
                   "for a run made with --nosingle")
    p.add_argument("--singleiter", type=int, default=8,
                   help="at most this many iterations of each model's own refinement (default 8; it stops "
                   "earlier when the resolution stops improving)")
    p.add_argument("--singleres", type=float, default=30.0,
                   help="each model's own refinement starts from its map low-passed to this resolution, Å "
                   "(default 30)")
    p.add_argument("--lowmem", action="store_true", help="smaller batches")
    p.add_argument("--j", type=int, metavar="N", help="threads here: --parallel thread:N (RELION's --j)")
    p.add_argument("--parallel",
                   help="thread:N (CPU threads here; default: the cores this process may use, SLURM_CPUS_PER_TASK "
                        "or its CPU affinity), or dask:ADDRESS: the searches and "
                        "reconstructions as tasks on a Dask cluster, ADDRESS its scheduler "
                        "(tcp://host:8786) or scheduler file; the workers compute on the CPU (--device auto is then the CPU) "
                        "and must see the particle files by the same absolute paths")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    p.add_argument("--max-shift", type=float, default=5.0, help="largest particle shift searched, px (default 5)")
    p.add_argument("--score", choices=("cc", "ls"), default="ls",
                   help="similarity: least squares (ls, default: classified best in bench/) or normalised "
                   "cross-correlation (cc)")
    p.add_argument("--soft", action="store_true",
                   help="each particle in every model by its posterior (default: its best model only, as "
                   "EMAN2; hard assignment classified better in bench/)")
    p.add_argument("--nosplitmerge", action="store_true",
                   help="no split and merge trials (default, with 3 or more models: iteration 3 and every other "
                   "one after it, not in the last 2, tries merging the most redundant model into the others and "
                   "re-seeding it from half of the largest, and keeps that when the cross-validated likelihood "
                   "grows)")
    _add_data_options(p)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--check", action="store_true", help="check files, sizes, symmetries and options; do not run")
    p.add_argument("--continue", dest="continue_run", metavar="RUN",
                   help="go on with the run in folder RUN after its last finished iteration")


def _add_mask_options(p: argparse.ArgumentParser) -> None:
    """Solvent masks, focused classification and the particle's diameter (multirefine.refine.solvent, focus)."""
    p.add_argument("--mask", metavar="FILE[,FILE...]",
                   help="solvent mask (MRC, values in [0, 1]: 1 kept, 0 solvent), one for all models or one per model: "
                   "each map is multiplied by it after every reconstruction, in place of the soft sphere (RELION's "
                   "--solvent_mask; relion_mask_create makes one); resampled to the particles' grid like the starting "
                   "maps; the run keeps copies (mask_MM.mrc)")
    p.add_argument("--focusmask", metavar="FILE",
                   help="focused classification: the models are compared on this mask's region only (values in [0, "
                   "1]); poses still come from the whole maps, and each particle has the models' common signal "
                   "outside the region subtracted at its pose first (relion_particle_subtract, then RELION's focused "
                   "Class3D); the run keeps a copy (focusmask.mrc)")
    p.add_argument("--write-subtracted", action="store_true",
                   help="with --focusmask: after the iterations, write every particle less the models' common signal "
                   "outside the focus mask at its pose (relion_particle_subtract's output) to "
                   "subtracted/particles_subtracted.star and .mrcs")
    p.add_argument("--particle-diameter", type=float, metavar="A",
                   help="the particle's diameter in Å (RELION's --particle_diameter): the sphere mask of the maps "
                   "(without --mask), the images' background beyond it (--noise coloured, --norm) and the angular "
                   "steps (default: estimated from the starting maps)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """What real stacks need: the noise model, normalisation, intensity scales, junk, local
    searches and a consensus refinement first (multirefine.refine.noise, intensity, ...)."""
    from multirefine.refine.options import SIGMA_ANG_DEG
    p.add_argument("--noise", choices=("white", "coloured"), default="white",
                   help="noise model of the score and the reconstruction: white (default), or coloured: the "
                   "noise power per Fourier shell of each optics group, estimated from the images' backgrounds, "
                   "weights every frequency (RELION's sigma2 noise spectra)")
    p.add_argument("--consensus", action="store_true",
                   help="first refine all particles against the one starting map (gold standard, into consensus/; "
                   "--singleiter and --singleres apply), then seed the models from its map and search locally "
                   "around its poses: for a starting map too featureless to fix the poses")
    p.add_argument("--junk", type=float, metavar="F",
                   help="junk (empty boxes, aggregates, broken particles): a particle whose fitted intensity at its "
                   "best pose (the least-squares scale of the reference in it) is below F times the median is in no "
                   "map and has rlnClassNumber 0 (try 0.5); re-judged every iteration; default: none")
    p.add_argument("--norm", action="store_true",
                   help="normalise each image as it is read (RELION's relion_preprocess --norm, ramp removed): the "
                   "plane fitted to its pixels beyond the particle's radius (+3 px) subtracted, divided by their SD")
    p.add_argument("--scale", action="store_true",
                   help="fit each particle's intensity scale (RELION's scale correction, per particle): its CTF is "
                   "multiplied by it in the search and the reconstruction; estimated after every search at the "
                   "particle's best pose, shrunk to 1 by a prior of SD 0.25; written as mrIntensityScale")
    p.add_argument("--globalsearch", action="store_true",
                   help="search every orientation even when --input holds poses (rlnAngleRot/Tilt/Psi, e.g. from a "
                   "consensus refinement); by default such poses are where local searches start (RELION's "
                   "--sigma_ang), and each later iteration searches around the last one's poses")
    p.add_argument("--sigma_ang", type=float, metavar="DEG",
                   help="local searches (see --globalsearch): weight each pose by a Gaussian prior of this SD (degrees) "
                   "around the particle's last pose, its shift by one of the SD's displacement at the particle's edge "
                   "(RELION's --sigma_ang); the first local pass stays within 3 SD; 0: no prior, the poses free "
                   f"within the local window; default {SIGMA_ANG_DEG:g} (0 with --score cc)")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _resolve(args: argparse.Namespace):
    """Open and check everything; return (stack, search stack, maps, options, model count)."""
    from multirefine import runfolder
    from multirefine.geometry.symmetry import parse_symmetry
    from multirefine.io.maps import read_map, read_maps
    from multirefine.io.particles import open_particles, open_usefilt
    from multirefine.refine.options import MAX_ITERATIONS, SIGMA_ANG_DEG, RefineOptions
    from multirefine.refine.seeding import fit_to_box
    from multirefine.runfolder.lock import LOCK_NAME

    if args.input is None:
        raise InputError("no particles: give --input (or --continue RUN)")
    if args.models and args.model:
        raise InputError("give --models (K maps) or --model with --nmodels, not both")
    if args.models and "nmodels" in getattr(args, "given", ()):
        raise InputError("--nmodels with --models: the number of maps given is the number of models")
    if not args.models and not args.model:
        raise InputError("no starting maps: give --models a.mrc,b.mrc or --model m.mrc --nmodels K")
    if args.model and args.nmodels < 2:
        raise InputError(f"--nmodels {args.nmodels}: expected 2 or more")
    stack = open_particles(args.input, apix=args.apix)
    search_stack = open_usefilt(stack, args.usefilt, apix=args.apix) if args.usefilt else stack
    stack.check(sample=min(len(stack), 200))  # files, indices, and NaN/Inf in a sample of images
    if search_stack is not stack:
        search_stack.check(sample=min(len(stack), 200))
    apix, box = stack.pixel_size_angstrom, stack.box_size
    if args.models:
        paths = _split(args.models)
        if len(paths) == 1:
            volumes, voxel = read_maps(paths[0])
            raw = [(v, voxel, f"{paths[0]}[{i}]") for i, v in enumerate(volumes)]
        else:
            raw = [(*read_map(p), p) for p in paths]
        seeding = "models"
    else:
        volume, voxel = read_map(args.model)
        raw = [(volume, voxel, args.model)]
        seeding = "randphase" if args.randphase else "mapfragment" if args.mapfragment else "randclassify"
    maps = [fit_to_box(v, vox, apix, box, name) for v, vox, name in raw]
    k = len(maps) if args.models else args.nmodels
    if k < 1:
        raise InputError("no starting maps")
    if k * MIN_PARTICLES_PER_MODEL > len(stack):
        raise InputError(f"{k} models for {len(stack)} particles: give each model {MIN_PARTICLES_PER_MODEL} "
                         f"particles or more (at most {max(1, len(stack) // MIN_PARTICLES_PER_MODEL)} models)")
    symmetries = [parse_symmetry(s) for s in _split(args.sym)]
    if len(symmetries) == 1:
        symmetries *= k
    elif len(symmetries) != k:
        raise InputError(f"--sym {args.sym}: {len(symmetries)} symmetries for {k} models (give one, or one per model)")
    mass = _masses(args.mass, k)
    device = device_and_threads(args)
    path = Path(args.path) if args.path else runfolder.next_free_path(".")
    if path.exists() and any(p.name != LOCK_NAME for p in path.iterdir()):  # a lock: said when it is taken
        raise InputError(f"--path {path}: the folder exists and is not empty; its files would be replaced (choose another)")
    opts = RefineOptions(
        input=str(args.input), path=str(path), symmetries=symmetries,
        iterations=MAX_ITERATIONS if args.iter is None else args.iter, until_settled=args.iter is None,
        usefilt=args.usefilt, targetres=args.targetres, speed=args.speed, sep=args.sep, classiter=args.classiter,
        m3dkeep=args.m3dkeep, classkeep=args.classkeep, mass_kda=mass, max_shift_px=args.max_shift,
        shrink=args.shrink, batch_size=batch_size(args), device=device, seed=args.seed, score=args.score, soft=args.soft,
        split_merge=not args.nosplitmerge, noise_model=args.noise,
        local_search=(_has_poses(search_stack.metadata) or args.consensus) and not args.globalsearch,
        consensus=args.consensus, junk_scale=args.junk, fit_intensity=args.scale, normalise=args.norm,
        hypotheses=args.hypotheses,
        sigma_ang_deg=args.sigma_ang if args.sigma_ang is not None else (SIGMA_ANG_DEG if args.score == "ls" else 0.0),
        start_maps=[name for _, _, name in raw], seeding=seeding, apix=args.apix, single=not args.nosingle,
        masks=None if args.mask is None else _split(args.mask), particle_diameter_angstrom=args.particle_diameter,
        focus_mask=args.focusmask, write_subtracted=args.write_subtracted,
        single_iterations=args.singleiter, single_start_resolution_angstrom=args.singleres,
    )
    _check_diameter(opts.particle_diameter_angstrom, apix, box)
    masks = read_masks(opts.masks, opts.focus_mask, apix, box)
    return stack, search_stack, maps, masks, opts


def _masses(text: str | None, k: int) -> list[float] | None:
    """``--mass``: one for every model or one per model (kDa)."""
    if not text:
        return None
    try:
        mass = [float(m) for m in _split(text)]
    except ValueError:
        raise InputError(f"--mass {text}: expected numbers in kDa") from None
    if len(mass) == 1:
        mass *= k
    elif len(mass) != k:
        raise InputError(f"--mass {text}: {len(mass)} masses for {k} models")
    return mass  # (a stack with no pixel size anywhere is refused when it is opened, --mass or not)


def _check_diameter(diameter: float | None, apix: float, box: int) -> None:
    if diameter is not None and diameter > box * apix:
        raise InputError(f"--particle-diameter {diameter:g}: wider than the particles' box ({box} px at {apix:g} Å/px "
                         f"= {box * apix:g} Å)")


def _has_poses(metadata) -> bool:
    """Whether a particle table holds orientations (not all zero) to start local searches from."""
    columns = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    return all(c in metadata.columns for c in columns) and bool((metadata[list(columns)].to_numpy() != 0).any())


def _remove_unfinished(path: Path, created: bool) -> None:
    """Remove what a new run wrote before its first iteration finished (the folder too if it
    made it). A failure here is reported, never raised over the error that stopped the run."""
    try:
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if created:
            path.rmdir()
    except OSError as exc:
        print(f"{path}: the unfinished run could not be removed ({exc})", file=sys.stderr)
        return
    print(f"{path}: {'removed' if created else 'emptied'}, the run stopped before its first iteration finished "
          "(nothing to --continue)", file=sys.stderr)


def _writers(opts, stack):
    """The run folder's writers for the engine (:mod:`multirefine.runfolder.writer`): maps
    written normalised by ``--mass``, figures and the report after every iteration and
    after each model's refinement on its own."""
    from multirefine import runfolder
    from multirefine.refine.postprocess import normalize_by_mass
    from multirefine.report.html import update_report, write_report_safely
    from multirefine.runfolder.writer import ModelFolder, RunWriter

    path, apix, mass = Path(opts.path), stack.pixel_size_angstrom, opts.mass_kda

    def written_maps(maps):
        return maps if not mass else [normalize_by_mass(v, m, apix) for v, m in zip(maps, mass)]

    def model_folder(m: int) -> ModelFolder:
        """Model m's folder (from 1); 0: the consensus refinement's, ``consensus/``."""
        if m == 0:
            return ModelFolder(path / runfolder.CONSENSUS, apix, stack.optics, image_files=stack.image_files_for)
        written = None if not mass else (lambda volume: normalize_by_mass(volume, mass[m - 1], apix))
        return ModelFolder(path / runfolder.model_folder_name(m), apix, stack.optics, written, stack.image_files_for)

    run = RunWriter(path, apix, stack.optics, opts.n_models, written_maps, update_report, stack.image_files_for)
    return run, model_folder, lambda: write_report_safely(path)


def _print_plan(stack, opts, resume) -> None:
    from multirefine import runfolder
    from multirefine.io.columns import optics_note

    print(
        f"{len(stack)} particles, box {stack.box_size}, {stack.pixel_size_angstrom:g} Å/px, CTF {'yes' if stack.has_ctf else 'no'}; "
        f"{opts.n_models} models ({opts.seeding}), symmetry {','.join(opts.symmetries)}; device {opts.device}"
    )
    if note := optics_note(stack.optics):  # said, not silently dropped (RELION's CtfRefine writes them)
        print(note)
    if opts.masks:
        print(f"solvent mask{'s' if len(opts.masks) > 1 else ''}: {', '.join(opts.masks)}"
              + (" (one per model)" if len(opts.masks) > 1 else " (every model)"))
    if opts.focus_mask:
        print(f"focused classification: the models compared within {opts.focus_mask}")
    if opts.particle_diameter_angstrom is not None:
        print(f"particle diameter {opts.particle_diameter_angstrom:g} Å")
    if resume is not None:
        print(f"continuing {opts.path} after iteration {resume.iteration} of {opts.iterations}, with its options "
              f"({opts.path}/{runfolder.PARAMETERS})")
    prior = f"pose prior SD {opts.sigma_ang_deg:g}°" if opts.sigma_ang_deg > 0 else "no pose prior"
    print(
        (f"until the assignment settles (at most {opts.iterations} iterations)" if opts.until_settled
         else f"{opts.iterations} iterations")
        + (f" (local searches from the input's poses, {prior}; --globalsearch: global)" if opts.local_search else "")
        + ", then "
        + (f"each model refined on its own (at most {opts.single_iterations} iterations, from "
           f"{opts.single_start_resolution_angstrom:g} Å)" if opts.single else "no refinement on its own (--nosingle)")
    )


def _print_singles(singles, path: Path) -> None:
    from multirefine import runfolder

    for m_index, single in enumerate(singles, start=1):
        folder = path / runfolder.model_folder_name(m_index)
        if single is None:
            print(f"model {m_index}: too few particles to refine on its own")
            continue
        print(
            f"model {m_index} on its own{' (finished before this --continue, kept)' if single.earlier else ''}: "
            f"{len(single.stats)} iterations in {sum(s.seconds for s in single.stats):.0f} s, resolution "
            f"{single.resolution_0143_angstrom:.1f} Å (FSC 0.143, independent half maps)"
            + ("" if single.masked_resolution_0143_angstrom is None else
               f", {single.masked_resolution_0143_angstrom:.1f} Å within --mask (solvent-corrected)")
            + f": {folder}/threed_final.mrc"
        )


def _make_folder(path: Path, resume) -> bool:
    """The run folder, made where it is new; whether this command made it. A new run's folder
    is new, or empty (_resolve): all that is in it is this run's."""
    created = resume is None and not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=not created)
    except FileExistsError:
        raise InputError(f"--path {path}: another command made this folder meanwhile (choose another)") from None
    return created


def _run(opts, stack, search_stack, maps, masks, resume, history, executor, created: bool, record: dict) -> None:
    """The run itself, in its folder (held by this process), from new or from ``resume``;
    ``record``: this command (:func:`multirefine.runfolder.record.command_record`); ``masks``:
    the ``--mask`` and ``--focusmask`` volumes (:class:`multirefine.cli.masks.RunMasks`), copied
    into a new run's folder."""
    from multirefine import runfolder
    from multirefine.io.atomic import atomic_path
    from multirefine.progress import StageProgress
    from multirefine.refine.driver import run_refinement
    from multirefine.refine.single import consensus_refinement, refine_each_model
    from multirefine.runfolder.record import COMMANDS, INPUT_IDENTITY, input_identity
    from multirefine.runfolder.records import read_convergence

    path = Path(opts.path)
    writer, model_folder, report = _writers(opts, stack)
    progress = StageProgress()
    before = (path / runfolder.PARAMETERS).read_bytes() if resume else None  # put back if nothing more is done
    try:
        try:
            saved = json.loads(before) if before is not None else {}
            identity = saved.get(INPUT_IDENTITY) or input_identity(stack)  # --continue checked it against the stack
            runfolder.write_json(path / runfolder.PARAMETERS, {**asdict(opts), COMMANDS: [*saved.get(COMMANDS, []), record],
                                                               INPUT_IDENTITY: identity})
            if resume is None:
                write_masks(path, masks, opts.n_models, stack.pixel_size_angstrom)
            if opts.consensus and resume is None:
                stack, search_stack, consensus = consensus_refinement(
                    opts, stack, search_stack, maps[0], model_folder(0), progress, executor, masks.solvent)
                maps = [consensus]
            multi = run_refinement(opts, stack, search_stack, maps, progress, resume, history, executor, writer,
                                   masks.solvent, masks.focus)
        except BaseException:
            if resume is None and not (path / runfolder.STATE).exists():
                _remove_unfinished(path, created)  # nothing --continue could take up; leave no partial run
            elif before is not None and len(read_convergence(path / runfolder.CONVERGENCE)) <= resume.iteration:
                with atomic_path(path / runfolder.PARAMETERS) as out:  # no iteration more: the options as they were
                    out.write_bytes(before)
            raise
        if opts.write_subtracted:
            star = write_subtracted(path, stack, multi.table, multi.maps, masks.focus, opts.batch_size)
            print(f"the particles less the models' common signal outside the focus mask: {star}")
        last = multi.stats[-1]
        print(
            f"multi-model: {len(multi.stats)} iterations in {sum(s.seconds for s in multi.stats):.0f} s; particles "
            f"per model {last.particles_per_model}; resolution (FSC 0.143, half maps) "
            + ", ".join(f"{r:.1f} Å" for r in last.resolution_0143_angstrom)
        )
        if opts.single:
            _print_singles(refine_each_model(opts, stack, search_stack, multi, progress, executor, model_folder,
                                             report, masks.solvent), path)
    finally:
        progress.close()


def main(args: argparse.Namespace) -> int:
    import torch

    from multirefine.io.atomic import remove_temporaries
    from multirefine.parallel import executor_for, parallel_spec
    from multirefine.runfolder.lock import LOCK_NAME, FolderLock
    from multirefine.runfolder.record import RunLog, command_record

    if args.single and args.nosingle:
        raise InputError("--single and --nosingle: give one of them")
    args.parallel = parallel_spec(args.j, args.parallel)
    maps, resume, history = None, None, None
    if args.continue_run is not None:
        stack, search_stack, opts, resume, history = resolve_continue(args)
        masks = saved_masks(opts, stack.box_size)
    else:
        stack, search_stack, maps, masks, opts = _resolve(args)
    with closing(executor_for(args.parallel)) as executor:  # a Dask client is closed on every path
        with redirect_stdout(io.StringIO()) as plan:  # printed now, and into run.log once there is one
            _print_plan(stack, opts, resume)
            print(f"particle loops: {executor.describe()}")
        print(plan.getvalue(), end="")
        if args.check:
            print("check: files, sizes, symmetries and options are consistent; nothing was run")
            return 0
        path = Path(opts.path)
        created = _make_folder(path, resume)
        record = command_record(args.argv, opts.device, args.parallel)
        with FolderLock(path):
            if resume is None and any(p.name != LOCK_NAME for p in path.iterdir()):
                raise InputError(f"--path {path}: another command wrote into the folder meanwhile (choose another)")
            left = remove_temporaries(path)  # by a process killed mid-write: this one holds the folder now
            with RunLog(path, f"{record['started']} on {record['host']}: {record['command_line']}", plan.getvalue()):
                if left:
                    print(f"removed {len(left)} temporary files an earlier, interrupted command left in {path}")
                _run(opts, stack, search_stack, maps, masks, resume, history, executor, created, record)
                if opts.device.startswith("cuda"):
                    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (torch's allocations)")
                print(f"results in {path}/; the report: {path}/index.html")
        return 0
