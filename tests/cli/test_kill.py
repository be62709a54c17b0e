"""A run killed anywhere, then ``--continue``: the results of a run never interrupted.

Twenty points, drawn with a fixed seed: SIGKILL (nothing runs after it) or SIGTERM (what a
batch scheduler sends at its time limit; the command stops as after Ctrl-C), sent either
at a random time or just before or just after a random one of the run's renames (the
moment an output file appears, atomically, under its name), in the multi-model iterations,
in each model's own refinement and in the report. After each, ``--continue`` (again where a
point kills that too) must end where the uninterrupted run ended, byte for byte in every map,
particle table and record, and leave no temporary file. A run killed before its first
iteration ended has nothing to take up: ``--continue`` says so in one line (or SIGTERM
removed the folder), and the run is started again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import random_atoms_map

from multirefine.cli.main import main
from multirefine.io.maps import write_map

pytestmark = pytest.mark.slow

POINTS = 20
SEED = 24

# Runs as ``python KILLER RUN_ARGS...``: multirefine's main, its renames counted; at rename
# number KILL_AT (1-based) this process sends itself KILL_SIGNAL, BEFORE or AFTER the rename.
KILLER = """
import os, signal, sys
from multirefine.cli.main import main
at, when = int(os.environ.get("KILL_AT", "0")), os.environ.get("KILL_WHEN", "before")
sig = getattr(signal, "SIG" + os.environ.get("KILL_SIGNAL", "KILL"))
count = [0]
replace = os.replace
def counted(src, dst, *args, **kwargs):
    count[0] += 1
    if count[0] == at and when == "before":
        os.kill(os.getpid(), sig)
    replace(src, dst, *args, **kwargs)
    if count[0] == at and when == "after":
        os.kill(os.getpid(), sig)
os.replace = counted
code = main(sys.argv[1:])
with open(os.environ["KILL_COUNT"], "w") as f:
    f.write(str(count[0]))
sys.exit(code)
"""

# Files whose bytes may differ between two equal runs: what records when and how a command ran
# (its time, command line, pid), and the report and figures made from them.
VARYING = {"run.log", "0_refine_parms.json", "index.html", ".multirefine.lock"}
VARYING_SUFFIXES = {".png", ".html", ".log"}
MRC_LABELS = (224, 1024)  # the bytes of an MRC header that hold its ten 80-character labels
TIMED_JSON = {"convergence.json", "finished.json"}  # compared without their "seconds"


@pytest.fixture(scope="module")
def kill_set(tmp_path_factory):
    """400 particles of two maps (box 32) and the argument list of a short whole run: three
    multi-model iterations to 8 Å, then each model on its own for three."""
    root = tmp_path_factory.mktemp("kill")
    for k, seed in enumerate((1, 2), 1):
        write_map(root / f"map{k}.mrc", random_atoms_map(32, 200, seed=seed), 1.0)
    assert main(["simulate", str(root / "sim"), "--maps", f"{root}/map1.mrc,{root}/map2.mrc", "--n", "400",
                 "--snr", "1", "--fractions", "0.6,0.4", "--seed", "3"]) == 0
    args = ["refine", "--input", str(root / "sim" / "particles.star"), "--models", f"{root}/map1.mrc,{root}/map2.mrc",
            "--iter", "3", "--singleiter", "3", "--targetres", "8", "--speed", "8", "--j", "1", "--device", "cpu"]
    return root, args


def _run(root: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    killer = root / "killer.py"
    killer.write_text(KILLER)
    count = root / f"count_{time.monotonic_ns()}"
    environment = {**os.environ, **(env or {}), "KILL_COUNT": str(count)}
    process = subprocess.Popen([sys.executable, str(killer), *args], env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return process, count


def _outputs(run: Path) -> dict[str, object]:
    """Every file of a finished run that two equal runs must share, by its path in the run."""
    found = {}
    for path in sorted(run.rglob("*")):
        name = str(path.relative_to(run))
        if not path.is_file() or path.name in VARYING or path.suffix in VARYING_SUFFIXES:
            continue
        if path.name in TIMED_JSON:
            record = json.loads(path.read_text())
            for entry in record if isinstance(record, list) else [record]:
                entry.pop("seconds", None)
            found[name] = record
        elif path.suffix in (".mrc", ".mrcs"):  # all but the header's labels (mrcfile dates each file)
            data = path.read_bytes()
            found[name] = data[:MRC_LABELS[0]] + data[MRC_LABELS[1]:]
        elif path.suffix == ".star":  # all but the starfile package's dated first line
            found[name] = [line for line in path.read_text().splitlines() if not line.startswith("# Created by")]
        else:
            found[name] = path.read_bytes()
    return found


def _points(renames: int, seconds: float) -> list[dict[str, str | float]]:
    """POINTS kill points: a signal, and a rename (before or after it) or a time."""
    rng = np.random.default_rng(SEED)
    points = []
    for i in range(POINTS):
        sig = ("KILL", "TERM")[i % 2]
        if i % 4 < 3:  # three in four at a rename: every stage writes, so every stage is reached
            points.append({"KILL_SIGNAL": sig, "KILL_AT": str(int(rng.integers(1, renames + 1))),
                           "KILL_WHEN": str(rng.choice(["before", "after"]))})
        else:
            points.append({"KILL_SIGNAL": sig, "after_seconds": float(rng.uniform(0.5, seconds))})
    return points


def _continue_until_done(run: Path, args: list[str], root: Path) -> list[str]:
    """``--continue`` (or, where nothing can be taken up, the run started again) until it ends
    with 0; what each attempt was."""
    attempts = []
    for _ in range(3):
        if not run.exists():
            attempts.append("started again (the run's folder was removed by SIGTERM)")
            process, _ = _run(root, [*args, "--path", str(run)])
        else:
            process, _ = _run(root, ["refine", "--continue", str(run), "--j", "1", "--device", "cpu"])
        _, err = process.communicate(timeout=300)
        if process.returncode == 0:
            attempts.append("continued")
            return attempts
        lines = err.strip().splitlines()
        assert process.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "stopped before its first iteration ended" in err, err
        attempts.append(f"refused in one line ({lines[0]}); the folder removed and the run started again")
        for path in sorted(run.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        run.rmdir()
    raise AssertionError(f"{run}: not finished after {attempts}")


def test_a_run_killed_anywhere_then_continued_is_the_uninterrupted_run(kill_set):
    root, args = kill_set
    started = time.monotonic()
    process, count = _run(root, [*args, "--path", str(root / "whole")])
    _, err = process.communicate(timeout=300)
    seconds = time.monotonic() - started
    assert process.returncode == 0, err
    renames = int(count.read_text())
    whole = _outputs(root / "whole")
    assert any(name.startswith("model_02/") for name in whole) and "state.npz" in whole

    reached = []
    for i, point in enumerate(_points(renames, seconds)):
        run = root / f"killed_{i:02d}"
        env = {k: v for k, v in point.items() if k != "after_seconds"}
        process, _ = _run(root, [*args, "--path", str(run)], env)
        if "after_seconds" in point:
            try:
                process.wait(timeout=point["after_seconds"])
            except subprocess.TimeoutExpired:
                process.send_signal(getattr(signal, "SIG" + point["KILL_SIGNAL"]))
        _, err = process.communicate(timeout=300)
        if process.returncode == 0:  # the time given was longer than the run took
            reached.append("finished")
        else:
            assert process.returncode in (130, -signal.SIGKILL, -signal.SIGTERM), (point, process.returncode, err)
            if process.returncode == -signal.SIGTERM:
                # SIGTERM ends the process itself only while Python starts, before the command
                # sets its handler, or once the command has ended and given the handler back:
                # then there is no folder yet, or the run is whole.
                assert not run.exists() or _stage(run) == "after", (point, err)
            if process.returncode == 130:
                assert err.strip().splitlines()[-1] == "multirefine refine: interrupted", err
                assert "Traceback" not in err, err
            reached.append(_stage(run))
        attempts = _continue_until_done(run, args, root)
        assert not [p for p in run.rglob(".*.tmp*")], (point, "temporary files left")
        assert not (run / ".multirefine.lock").exists(), point
        continued = _outputs(run)
        assert continued.keys() == whole.keys(), (point, attempts, sorted(continued.keys() ^ whole.keys()))
        for name in whole:
            assert continued[name] == whole[name], (point, attempts, name)
    # The points reached every stage: before the first iteration ended, the multi-model
    # iterations, and each model's own refinement.
    assert {"before iteration 1", "multi-model", "model 1 alone", "model 2 alone"} <= set(reached), reached


def _stage(run: Path) -> str:
    """Where a killed run was, from what it left."""
    if not (run / "state.npz").exists():
        return "before iteration 1"
    if (run / "model_02").exists():
        return "model 2 alone" if not (run / "model_02" / "finished.json").exists() else "after"
    if (run / "model_01").exists():
        return "model 1 alone"
    return "multi-model"
