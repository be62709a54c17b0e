"""Progress: a bar for every stage that goes over the particles, ending before any log line."""

from __future__ import annotations

import io
import logging

import pytest
from helpers import random_atoms_map

from multirefine.cli.main import main
from multirefine.io.maps import write_map
from multirefine.progress import StageProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_written_during_a_bar_has_a_line_of_its_own(monkeypatch):
    """A log line written while a bar is open starts on a line of its own, above the bar (the
    issue: the next log line was glued onto the bar); the handlers are as they were after."""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    before = list(root.handlers)
    try:
        progress = StageProgress()
        advance = progress("iteration 1: search", 100)
        advance(40)
        logging.getLogger("multirefine.test").warning("iteration 1 done")
        advance(60)
        progress.close()
        assert root.handlers == before
    finally:
        root.removeHandler(handler)
    text = terminal.getvalue()
    assert "iteration 1: search" in text
    line = text[text.index("iteration 1 done") - 1]
    assert line in "\r\n", repr(text)


@pytest.fixture
def three_states(tmp_path):
    maps = [random_atoms_map(32, 200, seed=s) for s in (1, 2, 3)]
    for k, m in enumerate(maps, 1):
        write_map(tmp_path / f"map{k}.mrc", m, 1.0)
    names = ",".join(str(tmp_path / f"map{k}.mrc") for k in (1, 2, 3))
    assert main(["simulate", str(tmp_path / "sim"), "--maps", names, "--n", "300", "--snr", "10", "--seed", "2"]) == 0
    return tmp_path, names


@pytest.mark.slow  # a whole run of three models with split and merge (about 20 s)
def test_every_stage_over_the_particles_has_a_bar(three_states, monkeypatch):
    """The search, reconstruction, class averages and split and merge's reconstructions and model
    choices each open a bar (they took seconds to minutes with none)."""
    root, names = three_states
    labels = []
    monkeypatch.setattr(StageProgress, "__call__", lambda self, label, total: labels.append(label) or (lambda n: None))
    assert main(["refine", "--input", str(root / "sim" / "particles.star"), "--models", names, "--iter", "5", "--targetres", "8", "--speed", "8",
                 "--nosingle", "--j", "1", "--path", str(root / "run")]) == 0
    for stage in ("search", "reconstruct", "class averages", "split and merge: reconstruct",
                  "split and merge: model choice"):
        assert f"iteration 3: {stage}" in labels, labels


def test_without_a_terminal_each_stage_is_one_line(monkeypatch, caplog):
    """Where stderr is not a terminal (a cluster job's log), a stage is one line once it is done."""
    monkeypatch.setattr("sys.stderr", io.StringIO())
    caplog.set_level(logging.INFO)
    progress = StageProgress()
    advance = progress("iteration 2: reconstruct", 100)
    advance(60)
    assert not caplog.records
    advance(40)
    progress("iteration 2: class averages", 10)(3)
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("iteration 2: reconstruct: 100 particles in ")
    assert lines[1].startswith("iteration 2: class averages: 3 of 10 particles in "), lines  # stopped early
