"""--junk: particles whose fitted intensity at their best pose is far below the others' are
in no map and have rlnClassNumber 0 (measured against the simulator's junk, truth class 0)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import random_atoms_map

from multirefine.refine.layers import junk_rows
from multirefine.simulate import SimulationParameters, simulate_dataset

BOX, APIX = 32, 2.0


def test_junk_rows_are_those_far_below_the_median():
    scale = np.array([1.0, 0.9, 1.2, 0.1, -0.2, 0.6, 0.25])
    np.testing.assert_array_equal(junk_rows(scale, 0.5), [False, False, False, True, True, False, True])
    assert not junk_rows(scale, None).any()


@pytest.mark.slow
def test_empty_boxes_are_caught(tmp_path):
    """20 % empty boxes at SNR 0.3, --junk 0.5: nearly all caught after 2 iterations, nearly no
    particle lost (measured: all caught, none lost)."""
    from multirefine.cli.main import main
    from multirefine.io.star import read_particles_star

    volume = random_atoms_map(BOX, 300, seed=5, spread_px=4.0)
    params = SimulationParameters(n_particles=300, snr=0.3, fractions=[1.0], pixel_size_angstrom=APIX, seed=2,
                                  junk_fraction=0.2, junk_kind_weights={"empty": 1.0, "blobs": 0.0, "fragment": 0.0})
    simulate_dataset(tmp_path / "sim", [volume], params)
    truth = read_particles_star(tmp_path / "sim" / "truth.star").metadata["rlnClassNumber"].to_numpy()
    gt = tmp_path / "sim" / "gt_01.mrc"
    run = tmp_path / "run"
    args = ["refine", "--input", str(tmp_path / "sim" / "particles.star"), "--models", f"{gt},{gt}", "--iter", "2",
            "--nosingle", "--path", str(run)]
    assert main([*args, "--junk", "0.5"]) == 0
    table = read_particles_star(run / "particles_02.star").metadata["rlnClassNumber"].to_numpy()
    stats = json.loads((run / "convergence.json").read_text())[-1]
    caught, lost = np.mean(table[truth == 0] == 0), np.mean(table[truth > 0] == 0)
    print(f"junk caught {caught:.3f}, particles lost {lost:.3f}")
    assert caught > 0.95 and lost < 0.02
    assert stats["junk_particles"] == int((table == 0).sum())
    assert sum(stats["particles_in_maps"]) <= 0.9 * (table > 0).sum() + 1  # junk in no map (--m3dkeep 0.9)
    # the junk in its own file, beside each model's particles, and in the report
    junk_table = read_particles_star(run / "particles_junk.star").metadata
    assert len(junk_table) == int((table == 0).sum()) and (junk_table["rlnClassNumber"] == 0).all()
    for m in (1, 2):
        assert (read_particles_star(run / f"particles_model_{m:02d}.star").metadata["rlnClassNumber"] == m).all()
    assert f"{stats['junk_particles']} particles fit no model" in (run / "index.html").read_text()
