"""multirefine: refine K cryo-EM maps at once from one heterogeneous particle stack."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import ModuleType

from multirefine import __version__
from multirefine.cli import demo, mask, reconstruct, refine, report, simulate, split
from multirefine.errors import ClusterError, InputError
from multirefine.progress import logging_level

__all__ = ["build_parser", "e2refinemulti", "main"]

# Listed explicitly, in the order of the help text.
SUBCOMMANDS: dict[str, ModuleType] = {
    "refine": refine,
    "split": split,
    "simulate": simulate,
    "reconstruct": reconstruct,
    "mask": mask,
    "report": report,
    "demo": demo,
}


def _summary(module: ModuleType) -> str:
    return (module.__doc__ or "").strip().splitlines()[0]


def _add_verbose(parser: argparse.ArgumentParser, default: int | None) -> None:
    """``-v N`` (EMAN2's ``--verbose``), as the command and :func:`_given`'s probe parse it."""
    parser.add_argument("-v", "--verbose", type=int, nargs="?", const=1, default=default, metavar="N",
                        help="0 (default): a line per iteration and warnings; 1 (-v): also each stage's time and "
                             "the search grid; 2 (-vv): also a line per batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multirefine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"multirefine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        p = sub.add_parser(
            name,
            help=_summary(module),
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_verbose(p, default=0)
        p.add_argument("--version", action="version", version=f"multirefine {__version__}")  # as EMAN2's e2 programs
        module.add_args(p)
        p.set_defaults(func=module.main)
    return parser


def _given(command: str, argv: list[str]) -> set[str]:
    """The options the command line gives (their ``dest``), told apart from defaults: the
    command's arguments parsed again with every default suppressed."""
    probe = argparse.ArgumentParser(add_help=False)
    _add_verbose(probe, default=None)  # None when not given
    SUBCOMMANDS[command].add_args(probe)
    for action in probe._actions:  # argparse has no public way to suppress defaults already given
        if action.dest != "verbose":
            action.default = argparse.SUPPRESS
    known, _ = probe.parse_known_args(argv[argv.index(command) + 1 :])
    return {name for name, value in vars(known).items() if name != "verbose" or value is not None}


def _counted_verbose(argv: list[str]) -> list[str]:
    """``-v N`` takes a level, as EMAN2's ``--verbose`` does; ``-vv`` is ``-v2``, and a ``-v``
    followed by no number is ``-v1`` (so it does not take the next argument, a run folder)."""
    out = []
    for i, a in enumerate(argv):
        if len(a) > 2 and a.startswith("-") and set(a[1:]) == {"v"}:
            a = f"-v{len(a) - 1}"
        elif a in ("-v", "--verbose") and not (i + 1 < len(argv) and argv[i + 1].isdigit()):
            a = "-v1"
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _counted_verbose(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    args.given = _given(args.command, argv)
    args.argv = [args.command, *argv[1:]] if argv and argv[0] == args.command else argv
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(logging_level(args.verbose))  # also where handlers were set before
    for noisy in ("matplotlib", "PIL", "h5py", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    terminate = _sigterm_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"multirefine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"multirefine {args.command}: error: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:  # the file system: permissions, a missing folder, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"multirefine {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not _out_of_memory(exc):
            raise
        print(f"multirefine {args.command}: error: out of memory (try --lowmem, a smaller box or fewer models)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"multirefine {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


def _out_of_memory(exc: RuntimeError) -> bool:
    """torch's allocators fail with a RuntimeError, not a MemoryError: on the CPU one that says
    so, on CUDA its subclass ``torch.OutOfMemoryError``."""
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """SIGTERM (what batch schedulers send at a time limit) stops a command as Ctrl-C does:
    a new run that has no finished iteration removes its folder, any other leaves what
    ``--continue`` takes up. Returns the handler it replaced (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def e2refinemulti(argv: list[str] | None = None) -> int:
    """The ``e2refinemulti`` console alias: ``multirefine refine`` with EMAN2's options."""
    return main(["refine", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
