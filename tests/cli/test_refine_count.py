"""``refine --nmodels auto`` on tiny data: the models counted from the particles, the count
recorded (``nmodels.json``, the options, the report), the run then an ordinary K-model run
that ``--continue`` takes up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multirefine.cli.main import main
from multirefine.io.maps import write_map
from multirefine.io.star import read_particles_star


def _states(subunit: bool) -> list[np.ndarray]:
    """A random-atom core, and (``subunit``) the core with 120 atoms more on one side."""
    from multirefine.simulate import AtomicModel, map_from_atoms

    rng = np.random.default_rng(1)
    core = rng.normal(0, 4.0, (250, 3))
    extra = rng.normal(0, 2.0, (120, 3)) + [7.0, 0.0, 0.0]
    atoms = [core, np.vstack([core, extra])] if subunit else [core]
    return [map_from_atoms(AtomicModel(x, np.full(len(x), 6.0), "atoms"), 32, 1.0, 2.0, center_angstrom=np.zeros(3))
            for x in atoms]


def _set(root, maps, n):
    """``n`` particles of ``maps`` (SNR 0.5) and their mean, the one starting map."""
    for k, volume in enumerate(maps, start=1):
        write_map(root / f"map{k}.mrc", volume, 1.0)
    write_map(root / "start.mrc", np.mean(maps, axis=0), 1.0)
    names = ",".join(str(root / f"map{k}.mrc") for k in range(1, len(maps) + 1))
    assert main(["simulate", str(root / "sim"), "--maps", names, "--n", str(n), "--snr", "0.5", "--seed", "3"]) == 0


def _count(root, run, *extra):
    return main(["refine", "--input", str(root / "sim" / "particles.star"), "--model", str(root / "start.mrc"),
                 "--nmodels", "auto", "--kmax", "3", "--nosingle", "--targetres", "8", "--path", str(run), "--j", "1",
                 *extra])


def test_two_states_are_counted_and_the_run_goes_on_with_them(tmp_path, capsys):
    _set(tmp_path, _states(subunit=True), 300)
    run = tmp_path / "run"
    assert _count(tmp_path, run, "--iter", "1") == 0
    assert "models counted: 2" in capsys.readouterr().out
    count = json.loads((run / "nmodels.json").read_text())
    assert count["chosen"] == 2 and [s["models"] for s in count["steps"]] == [1, 2, 3]
    assert count["steps"][1]["kept"] and not count["steps"][2]["kept"]
    options = json.loads((run / "0_refine_parms.json").read_text())
    assert options["symmetries"] == ["C1", "C1"] and options["kmax"] == 3
    table = read_particles_star(run / "particles_01.star").metadata
    truth = read_particles_star(tmp_path / "sim" / "truth.star").metadata["rlnClassNumber"].to_numpy()
    found = table["rlnClassNumber"].to_numpy()
    assert max(np.mean(found == truth), np.mean(found == 3 - truth)) > 0.95
    page = (run / "index.html").read_text()
    assert "<h2>Number of models</h2>" in page and (run / "report" / "nmodels.png").stat().st_size > 0
    assert main(["refine", "--continue", str(run), "--iter", "2"]) == 0  # an ordinary two-model run now
    assert len(json.loads((run / "convergence.json").read_text())) == 2
    assert json.loads((run / "nmodels.json").read_text()) == count


@pytest.mark.slow
def test_one_state_is_one_model(tmp_path, capsys):
    _set(tmp_path, _states(subunit=False), 300)
    run = tmp_path / "run"
    assert _count(tmp_path, run, "--iter", "1") == 0
    count = json.loads((run / "nmodels.json").read_text())
    assert count["chosen"] == 1 and not count["steps"][1]["kept"], count
    assert json.loads((run / "0_refine_parms.json").read_text())["symmetries"] == ["C1"]
