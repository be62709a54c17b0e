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

With --nmodels auto the number of models is counted from the data first: the particles are
refined against the one map (4 iterations), then models are added one split at a time (each
model's split screened at the poses it has, the best one confirmed after every particle is
searched again in all the models) while a split raises the cross-validated mixture
log-likelihood by more than 0.05 per particle (at most --kmax); the run then goes on with
that many models. nmodels.json and the report hold the curve and the reason for the number
chosen.

A run that stopped (a crash, a killed job, or one that wants more iterations) goes on with
--continue RUN: from its last finished iteration, with the options it was started with
(state.npz, 0_refine_parms.json); the result is the one an uninterrupted run gives. Only
--iter, --single, --nosingle, --singleiter, --singleres, --parallel (--j), --device and
--lowmem may change. A model refined on its own before is kept if nothing it depends on changed.

examples:
  multirefine refine --input particles.star --models a.mrc,b.mrc --iter 5
  multirefine refine --input particles.star --model consensus.mrc --nmodels 2
  multirefine refine --input particles.star --model consensus.mrc --nmodels auto --kmax 6
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
from dataclasses import asdict, replace
from pathlib import Path

from multirefine.cli.continuation import resolve_continue
from multirefine.cli.machine import batch_size, check_memory, device_and_threads
from multirefine.cli.masks import read_masks, saved_masks, write_masks, write_subtracted
from multirefine.cli.refine_args import add_args, model_count, split_list
from multirefine.errors import InputError

__all__ = ["add_args", "main"]

log = logging.getLogger(__name__)

MIN_PARTICLES_PER_MODEL = 10  # two half-sets of 5: below that a model's FSC means nothing


def _resolve(args: argparse.Namespace):
    """Open and check everything; return (stack, search stack, maps, options, model count)."""
    from multirefine import runfolder
    from multirefine.geometry.symmetry import parse_symmetry
    from multirefine.io.maps import read_map, read_maps
    from multirefine.io.particles import open_particles, open_usefilt, use_ctf
    from multirefine.refine.options import MAX_ITERATIONS, SIGMA_ANG_DEG, RefineOptions
    from multirefine.refine.seeding import fit_to_box
    from multirefine.runfolder.lock import LOCK_NAME, refuse_if_held

    if args.input is None:
        raise InputError("no particles: give --input (or --continue RUN)")
    if args.models and args.model:
        raise InputError("give --models (K maps) or --model with --nmodels, not both")
    if args.models and "nmodels" in getattr(args, "given", ()):
        raise InputError("--nmodels with --models: the number of maps given is the number of models")
    if not args.models and not args.model:
        raise InputError("no starting maps: give --models a.mrc,b.mrc or --model m.mrc --nmodels K")
    args.nmodels = model_count(args)
    auto = args.nmodels == "auto"
    stack = open_particles(args.input, apix=args.apix)
    search_stack = open_usefilt(stack, args.usefilt, apix=args.apix) if args.usefilt else stack
    for particles in {stack, search_stack}:
        use_ctf(particles, args.no_ctf)
    stack.check(sample=min(len(stack), 200))  # files, indices, and NaN/Inf in a sample of images
    if search_stack is not stack:
        search_stack.check(sample=min(len(stack), 200))
    apix, box = stack.pixel_size_angstrom, stack.box_size
    if args.models:
        paths = split_list(args.models)
        if len(paths) == 1:
            volumes, voxel = read_maps(paths[0])
            raw = [(v, voxel, f"{paths[0]}[{i}]") for i, v in enumerate(volumes)]
        else:
            raw = [(*read_map(p), p) for p in paths]
        seeding = "models"
    else:
        volume, voxel = read_map(args.model)
        raw = [(volume, voxel, args.model)]
        seeding = ("models" if auto else "randphase" if args.randphase else "mapfragment" if args.mapfragment
                   else "randclassify")
    maps = [fit_to_box(v, vox, apix, box, name) for v, vox, name in raw]
    k = len(maps) if args.models else 1 if auto else args.nmodels
    if k < 1:
        raise InputError("no starting maps")
    if k * MIN_PARTICLES_PER_MODEL > len(stack):
        raise InputError(f"{k} models for {len(stack)} particles: give each model {MIN_PARTICLES_PER_MODEL} "
                         f"particles or more (at most {max(1, len(stack) // MIN_PARTICLES_PER_MODEL)} models)")
    symmetries = [parse_symmetry(s) for s in split_list(args.sym)]
    if len(symmetries) == 1:
        symmetries *= k
    elif len(symmetries) != k:
        raise InputError(f"--sym {args.sym}: {len(symmetries)} symmetries for {k} models (give one, or one per model)")
    mass = _masses(args.mass, k)
    device = device_and_threads(args)
    path = Path(args.path) if args.path else runfolder.next_free_path(".")
    if path.exists() and any(p.name != LOCK_NAME for p in path.iterdir()):  # a lock: said when it is taken
        refuse_if_held(path)  # a run started a moment before on the same --path
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
        masks=None if args.mask is None else split_list(args.mask), particle_diameter_angstrom=args.particle_diameter,
        focus_mask=args.focusmask, write_subtracted=args.write_subtracted,
        single_iterations=args.singleiter, single_start_resolution_angstrom=args.singleres,
        kmax=args.kmax if auto else None, no_ctf=args.no_ctf, write_lst=args.lst,
    )
    _check_against_box(opts, apix, box)
    masks = read_masks(opts.masks, opts.focus_mask, apix, box)
    return stack, search_stack, maps, masks, opts


def _masses(text: str | None, k: int) -> list[float] | None:
    """``--mass``: one for every model or one per model (kDa)."""
    if not text:
        return None
    try:
        mass = [float(m) for m in split_list(text)]
    except ValueError:
        raise InputError(f"--mass {text}: expected numbers in kDa") from None
    if len(mass) == 1:
        mass *= k
    elif len(mass) != k:
        raise InputError(f"--mass {text}: {len(mass)} masses for {k} models")
    return mass  # (a stack with no pixel size anywhere is refused when it is opened, --mass or not)


def _check_against_box(opts, apix: float, box: int) -> None:
    """The options that must fit the particles' box: the particle's diameter, the largest shift."""
    diameter = opts.particle_diameter_angstrom
    if diameter is not None and diameter > box * apix:
        raise InputError(f"--particle-diameter {diameter:g}: wider than the particles' box ({box} px at {apix:g} Å/px "
                         f"= {box * apix:g} Å)")
    if opts.max_shift_px > box / 2:
        raise InputError(f"--max-shift {opts.max_shift_px:g}: beyond half the particles' box ({box} px): the "
                         "particle would be shifted out of its image")


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
          "(nothing to --continue)")  # on stdout: the error that stopped it is stderr's one line


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

    run = RunWriter(path, apix, stack.optics, opts.n_models, written_maps, update_report, stack.image_files_for,
                    lst=opts.write_lst)
    return run, model_folder, lambda: write_report_safely(path)


def _print_plan(stack, opts, resume) -> None:
    from multirefine import runfolder
    from multirefine.io.columns import optics_note

    print(
        f"{len(stack)} particles, box {stack.box_size}, {stack.pixel_size_angstrom:g} Å/px, CTF {'yes' if stack.has_ctf else 'no'}; "
        + (f"models counted from the data (--nmodels auto, at most {opts.kmax})" if opts.kmax is not None
           and resume is None else f"{opts.n_models} models ({opts.seeding})")
        + f", symmetry {','.join(opts.symmetries)}; device {opts.device}"
    )
    if stack.has_ctf and (note := optics_note(stack.metadata, stack.aberrations)):  # RELION's CtfRefine writes them
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
    from multirefine.refine.posecheck import PosesMoved

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
        try:
            moved = PosesMoved.read(folder / runfolder.POSES_MOVED)
        except InputError as exc:  # the run is done: say so, and go on
            print(f"model {m_index}: {exc}", file=sys.stderr)
            continue
        if moved is not None and moved.caution:
            print(f"model {m_index}: caution: {moved.describe()} ({folder}/{runfolder.POSES_MOVED})")


def _counted(opts, stack, search_stack, start_map, progress, executor, masks):
    """``--nmodels auto``: the models counted (:func:`multirefine.refine.driver.count_models`),
    the count written to ``nmodels.json``; the options with that many models and their
    starting maps."""
    from multirefine import runfolder
    from multirefine.refine.driver import count_models

    count = count_models(opts, stack, search_stack, start_map, progress, executor, masks)
    runfolder.write_json(Path(opts.path) / runfolder.NMODELS, count.to_json())
    k = count.chosen
    print(f"models counted: {k} ({count.reason}); {Path(opts.path) / runfolder.NMODELS}")
    counted = replace(opts, symmetries=opts.symmetries[:1] * k, align_maps=False,
                      mass_kda=None if opts.mass_kda is None else opts.mass_kda[:1] * k)
    return counted, count.classified.made.maps


def _write_parameters(path: Path, opts, commands: list[dict], identity) -> None:
    """``0_refine_parms.json``: the options, every command that ran the run, the input's identity."""
    from multirefine import runfolder
    from multirefine.runfolder.record import COMMANDS, INPUT_IDENTITY

    runfolder.write_json(path / runfolder.PARAMETERS, {**asdict(opts), COMMANDS: commands, INPUT_IDENTITY: identity})


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
            commands = [*saved.get(COMMANDS, []), record]
            _write_parameters(path, opts, commands, identity)
            if opts.consensus and resume is None:
                stack, search_stack, consensus = consensus_refinement(
                    opts, stack, search_stack, maps[0], model_folder(0), progress, executor, masks.solvent)
                maps = [consensus]
            if opts.kmax is not None and resume is None:  # --nmodels auto
                opts, maps = _counted(opts, stack, search_stack, maps[0], progress, executor, masks.solvent)
                _write_parameters(path, opts, commands, identity)  # with the number counted
                writer, model_folder, report = _writers(opts, stack)
            if resume is None:
                write_masks(path, masks, opts.n_models, stack.pixel_size_angstrom)
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
        if opts.write_lst:
            _eman2_maps(path, opts.n_models, last.iteration, stack.pixel_size_angstrom)
    finally:
        progress.close()


def _eman2_maps(path: Path, n_models: int, iteration: int, apix: float) -> None:
    """``--lst``: the last multi-model maps and each model's own final map also as EMAN2 HDF
    (``threed_II_MM.hdf``, ``model_MM/threed_final.hdf``) beside their MRC files."""
    from multirefine import runfolder
    from multirefine.io.eman2 import write_eman2_map
    from multirefine.io.maps import read_map

    maps = [path / runfolder.map_name(iteration, m) for m in range(1, n_models + 1)]
    maps += [path / runfolder.model_folder_name(m) / "threed_final.mrc" for m in range(1, n_models + 1)]
    for mrc in maps:
        if mrc.exists():
            write_eman2_map(mrc.with_suffix(".hdf"), read_map(mrc)[0], apix)


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
    most = opts.n_models if opts.kmax is None else opts.kmax + 1  # --nmodels auto screens K + 1 at kmax
    memory = check_memory(stack.box_size, most, len(stack), opts.device)
    with closing(executor_for(args.parallel)) as executor:  # a Dask client is closed on every path
        with redirect_stdout(io.StringIO()) as plan:  # printed now, and into run.log once there is one
            _print_plan(stack, opts, resume)
            print(f"particle loops: {executor.describe()}")
            print(memory)
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
