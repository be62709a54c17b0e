"""``multirefine refine --continue RUN``: the run folder checked and read before anything is
written to it (its options, state, convergence record and the identity of its particles), and
its options with what the continuing command may change (:data:`CONTINUE_OPTIONS`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from multirefine.cli.machine import batch_size, device_and_threads
from multirefine.errors import InputError

__all__ = ["CONTINUE_OPTIONS", "resolve_continue"]

# What --continue may change; every other option is the run's (0_refine_parms.json).
CONTINUE_OPTIONS = ("iter", "single", "nosingle", "singleiter", "singleres", "parallel", "j", "device", "lowmem", "check",
                    "verbose", "write_subtracted", "lst")


def resolve_continue(args: argparse.Namespace):
    """The run in ``--continue RUN``: (stack, search stack, its options with what this command
    changes, the iterations it has done)."""
    from dataclasses import fields

    from multirefine import runfolder
    from multirefine.geometry.symmetry import parse_symmetry
    from multirefine.io.particles import open_particles, open_usefilt, use_ctf
    from multirefine.refine.options import RefineOptions
    from multirefine.runfolder.record import INPUT_IDENTITY, check_input_identity
    from multirefine.runfolder.records import read_convergence
    from multirefine.runfolder.state import load_state

    run = Path(args.continue_run)
    given = args.given  # the options this command line names (cli.main), defaults or not
    changed = [name for name in vars(args) if name in given and name != "continue_run" and name not in CONTINUE_OPTIONS]
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise InputError(f"--continue {run}: {flags} cannot change (the run keeps its {runfolder.PARAMETERS}); "
                         "only --iter, --single, --nosingle, --singleiter, --singleres, --parallel (--j), --device, "
                         "--lowmem, --write-subtracted and --lst can")
    parameters = run / runfolder.PARAMETERS
    if not parameters.is_file():
        raise InputError(f"--continue {run}: {parameters} not found; not a multirefine run folder")
    try:
        saved = json.loads(parameters.read_text())
        saved.setdefault("split_merge", False)  # a run made before split and merge existed goes on without it
        known = {f.name for f in fields(RefineOptions)}
        options = {key: value for key, value in saved.items() if key in known}
        _check_types(options, parameters)
        options["symmetries"] = [parse_symmetry(s) for s in options["symmetries"]]
        opts = RefineOptions(**options)
    except InputError as exc:  # a value out of range, or an unknown symmetry: said of the file
        raise InputError(str(exc) if str(exc).startswith(str(parameters)) else f"{parameters}: {exc}") from None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(f"{parameters}: not readable ({type(exc).__name__}: {exc})") from None
    opts.path = str(run)
    if args.iter is not None:
        opts.iterations, opts.until_settled = args.iter, False
    opts.single = (opts.single or args.single) and not args.nosingle
    if "singleiter" in given:
        opts.single_iterations = args.singleiter
    if "singleres" in given:
        opts.single_start_resolution_angstrom = args.singleres
    opts.write_subtracted = opts.write_subtracted or args.write_subtracted  # a finished run's, written now
    opts.write_lst = opts.write_lst or args.lst
    opts.validate()
    opts.batch_size = batch_size(args)  # like the device, this command's: --lowmem or not
    opts.device = device_and_threads(args)  # the machine's, as for a new run
    stack = open_particles(opts.input, apix=opts.apix)
    search_stack = open_usefilt(stack, opts.usefilt, apix=opts.apix) if opts.usefilt else stack
    if "no_ctf" not in saved:  # a run made before --no-ctf: it went without the CTF where there was none
        opts.no_ctf = not stack.has_ctf
    if "aberrations" not in saved:  # a run made before beam tilt and Zernike terms were applied
        opts.aberrations = False
    for particles in {stack, search_stack}:
        use_ctf(particles, opts.no_ctf, opts.aberrations)
    check_input_identity(saved.get(INPUT_IDENTITY), stack, opts.input, run)
    state = load_state(run / runfolder.STATE, len(stack), stack.box_size)
    if state.iteration > opts.iterations:
        raise InputError(f"--iter {opts.iterations}: the run {run} has done {state.iteration} iterations already")
    if len(state.maps) != opts.n_models:
        raise InputError(f"{parameters}: {opts.n_models} symmetries, one per model, where {run / runfolder.STATE} "
                         f"holds {len(state.maps)} models")
    history = read_convergence(run / runfolder.CONVERGENCE)
    if len(history) < state.iteration:
        raise InputError(f"{run / runfolder.CONVERGENCE}: damaged, {len(history)} iterations of {state.iteration}")
    return stack, search_stack, opts, state, history


def _check_types(options: dict, parameters: Path) -> None:
    """InputError where a saved option is not of its field's type (a hand-edited or damaged
    ``0_refine_parms.json``): said here, naming it, not as a failure deep in the run."""
    import types
    import typing

    from multirefine.refine.options import RefineOptions

    def fits(value, hint) -> bool:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            return any(fits(value, a) for a in args)
        if origin is list:
            return isinstance(value, list) and all(fits(v, args[0]) for v in value)
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return hint is type(None) and value is None or hint is not type(None) and isinstance(value, hint)

    for name, hint in typing.get_type_hints(RefineOptions).items():
        if name in options and not fits(options[name], hint):
            raise InputError(f"{parameters}: {name} is {options[name]!r}, not a {hint}")
