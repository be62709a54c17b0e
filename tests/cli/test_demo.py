"""The demo end to end at a tiny size (make demo runs it at full size)."""

import pytest

from multirefine.cli.main import main

pytest.importorskip("MDAnalysisTests", reason="the demo's atomic models come from mdanalysistests")


@pytest.mark.slow
def test_demo_runs_and_reports_against_the_truth(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--n", "300", "--iter", "1", "--singleiter", "1"]) == 0
    out = capsys.readouterr().out
    assert "% of particles in the right model" in out
    assert "open: model" in out and "closed: model" in out
    assert (tmp_path / "demo" / "refine" / "particles_01.star").exists()
    assert "each model's particles refined on their own" in out and "half maps" in out
    assert (tmp_path / "demo" / "refine" / "model_01" / "threed_final.mrc").exists()
