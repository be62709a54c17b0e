"""How far a model's poses moved in its own refinement (multirefine.refine.posecheck), where
it is written (model_MM/poses_moved.json) and what the report says of it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from multirefine.errors import InputError
from multirefine.geometry.euler import matrix_to_euler
from multirefine.geometry.symmetry import symmetry_operators
from multirefine.refine.posecheck import CAUTION_SHARE, FAR_DEG, PosesMoved, poses_moved
from multirefine.report.models import models_section
from multirefine.runfolder import POSES_MOVED
from multirefine.runfolder.writer import ModelFolder


def _table(rotations: np.ndarray) -> pd.DataFrame:
    rot, tilt, psi = matrix_to_euler(rotations)
    return pd.DataFrame({"rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi})


def _about(axis: np.ndarray, deg: float) -> np.ndarray:
    """The rotation by ``deg`` about ``axis`` (Rodrigues)."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    return q * np.sign(np.linalg.det(q))[:, None, None]


def test_the_share_moved_to_another_frame_is_counted():
    """3 particles in 10 turned by 150°, the others by 5°: 30 % far, median 5°, a caution;
    poses turned by a symmetry operator have not moved."""
    rng = np.random.default_rng(0)
    before = _random_rotations(10, rng)
    turns = np.array([_about(rng.normal(size=3), 150.0 if i < 3 else 5.0) for i in range(10)])
    after = before @ turns
    moved = poses_moved(_table(before), _table(after), np.eye(3)[None])
    assert moved.particles == 10 and moved.far_share == pytest.approx(0.3)
    assert moved.median_deg == pytest.approx(5.0, abs=0.01) and moved.caution
    assert "30 % of its particles' poses moved more than 100°" in moved.describe() and "may claim more" in moved.describe()
    c2 = symmetry_operators("c2")
    mates = np.einsum("nij,jk->nik", before, c2[1].T)  # R S^T: the same image of a C2 map
    assert poses_moved(_table(before), _table(mates), c2).far_share == 0.0
    assert poses_moved(_table(before), _table(mates), np.eye(3)[None]).far_share == 1.0  # 180° in C1: moved
    assert FAR_DEG < 180


def test_a_few_moved_far_is_no_caution_and_no_poses_no_check():
    rng = np.random.default_rng(1)
    before = _random_rotations(100, rng)
    after = before.copy()
    after[: int(100 * CAUTION_SHARE)] = _random_rotations(int(100 * CAUTION_SHARE), rng)  # at most the share
    moved = poses_moved(_table(before), _table(after), np.eye(3)[None])
    assert moved.far_share <= CAUTION_SHARE and not moved.caution and "may claim" not in moved.describe()
    assert poses_moved(pd.DataFrame({"rlnImageName": ["1@a.mrcs"]}), _table(before[:1]), np.eye(3)[None]) is None
    nan = _table(before[:2]).assign(rlnAngleRot=np.nan)
    assert poses_moved(nan, _table(before[:2]), np.eye(3)[None]) is None


def test_the_check_is_written_read_cleared_and_shown(tmp_path):
    """ModelFolder writes poses_moved.json (and removes it where there is no check, and when
    an earlier refinement is cleared); a damaged one is one InputError naming it; the report's
    models table shows the share and a caution naming the model."""
    folder = ModelFolder(tmp_path / "model_02", 1.0, None)
    folder.folder.mkdir()
    moved = PosesMoved(200, 35.0, 0.25)
    folder.checked(moved)
    path = tmp_path / "model_02" / POSES_MOVED
    assert PosesMoved.read(path) == moved and json.loads(path.read_text())["caution"] is True
    folder.checked(None)
    assert not path.exists() and PosesMoved.read(path) is None
    folder.checked(moved)
    folder.clear()
    assert not path.exists()
    path.write_text('{"particles": 3}')
    with pytest.raises(InputError, match="poses_moved.json: damaged"):
        PosesMoved.read(path)
    ModelFolder(tmp_path / "model_01", 1.0, None).folder.mkdir()
    ModelFolder(tmp_path / "model_01", 1.0, None).checked(PosesMoved(300, 4.0, 0.0))
    folder.checked(moved)
    last = {"particles_per_model": [300, 200], "resolution_0143_angstrom": [6.0, 8.0]}
    singles = {1: [{"resolution_0143_angstrom": 5.5}], 2: [{"resolution_0143_angstrom": 7.5}]}
    page = "".join(models_section(tmp_path, last, singles, 2))
    assert "poses moved &gt; 100° on its own" in page
    assert "<td>0 %</td>" in page and "<td>25 % (caution)</td>" in page
    assert "Caution, model 2:" in page and "Caution, model 1:" not in page


def test_values_a_check_cannot_have_are_refused_and_nan_poses_left_out(tmp_path):
    path = tmp_path / POSES_MOVED
    for record in ({"particles": 10, "median_deg": 5.0, "far_share": 1.5, "far_deg": 100.0},
                   {"particles": 0, "median_deg": 5.0, "far_share": 0.1, "far_deg": 100.0},
                   {"particles": 10, "median_deg": float("nan"), "far_share": 0.1, "far_deg": 100.0}):
        path.write_text(json.dumps(record))
        with pytest.raises(InputError, match="poses_moved.json: damaged"):
            PosesMoved.read(path)
    before = _random_rotations(4, np.random.default_rng(2))
    after = _table(before).assign(rlnAngleRot=[np.nan, 0.0, 0.0, 0.0])
    moved = poses_moved(_table(before), after, np.eye(3)[None])
    assert moved.particles == 3


def test_the_run_s_last_lines_caution_and_survive_a_damaged_check(tmp_path, capsys):
    """At the end of a run: a cautioned model gets a line naming the file; a damaged file is
    one line on stderr, and the other models' lines still come."""
    from multirefine.cli.refine import _print_singles
    from multirefine.refine.single import SingleResult

    for m, text in ((1, "{cut"), (2, json.dumps(PosesMoved(100, 40.0, 0.3).to_json()))):
        (tmp_path / f"model_{m:02d}").mkdir()
        (tmp_path / f"model_{m:02d}" / POSES_MOVED).write_text(text)
    _print_singles([SingleResult([], 9.0), SingleResult([], 8.0)], tmp_path)
    out, err = capsys.readouterr()
    assert "model_01/poses_moved.json: damaged" in err and len(err.strip().splitlines()) == 1
    assert "model 2: caution: 30 % of its particles' poses moved more than 100°" in out and "model 1 on its own" in out
