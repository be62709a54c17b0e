"""Write the HTML report of a run folder (RUN/index.html, figures in RUN/report/).

`multirefine refine` writes it after every iteration and at the end; this rebuilds it,
e.g. for a run folder copied from elsewhere or a run that was stopped.

examples:
  multirefine report multi_01
"""

from __future__ import annotations

import argparse
from pathlib import Path

from multirefine.errors import InputError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder of multirefine refine (multi_NN)")


def main(args: argparse.Namespace) -> int:
    from multirefine.report.html import write_report

    run = Path(args.run)
    if not run.is_dir():
        raise InputError(f"{run}: no such run folder")
    try:
        out = write_report(run)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a record of the run lacks what it should hold
        raise InputError(f"{run}: a damaged run folder, its records lack what a run writes "
                         f"({type(exc).__name__}: {exc})") from None
    print(f"report: {out}")
    return 0
