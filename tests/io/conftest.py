"""Fixtures for the io tests: the shared real-format files and small generated data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED_TESTDATA as TESTDATA
from io_helpers import ctf_table

from multirefine.io.maps import write_stack
from multirefine.io.star import write_particles_star


@pytest.fixture(scope="session")
def testdata() -> Path:
    """``<repo>/../shared/testdata`` (real RELION/cryoSPARC/EMAN2 files); skip if absent."""
    if not TESTDATA.is_dir():
        pytest.skip(f"real-format test files not found at {TESTDATA.resolve()} (fresh clone)")
    return TESTDATA.resolve()


@pytest.fixture
def make_star(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray]]:
    """Write ``n`` random 16x16 images to ``images.mrcs`` and a 3.1 STAR ``particles.star``."""

    def make(
        n: int = 6, box: int = 16, apix: float = 2.5, star_name: str = "particles.star"
    ) -> tuple[Path, np.ndarray]:
        rng = np.random.default_rng(0)
        images = rng.normal(size=(n, box, box)).astype(np.float32)
        (tmp_path / "stacks").mkdir(exist_ok=True)
        write_stack(tmp_path / "stacks" / "images.mrcs", images, apix)
        table = ctf_table(n, rng)
        table.insert(0, "rlnImageName", [f"{i + 1:06d}@stacks/images.mrcs" for i in range(n)])
        table["rlnImagePixelSize"] = apix
        star = tmp_path / star_name
        write_particles_star(star, table, box_size=box)
        return star, images

    return make
