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
    print(f"report: {write_report(run)}")
    return 0
