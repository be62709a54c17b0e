"""Small generated data shared by the io tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def ctf_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Per-particle CTF, pose and class columns in RELION units."""
    return pd.DataFrame(
        {
            "rlnDefocusU": rng.uniform(10000, 25000, n),
            "rlnDefocusV": rng.uniform(10000, 25000, n),
            "rlnDefocusAngle": rng.uniform(-180, 180, n),
            "rlnVoltage": 300.0,
            "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.1,
            "rlnPhaseShift": 0.0,
            "rlnCtfBfactor": 0.0,
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": rng.uniform(0, 180, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": rng.normal(0, 3, n),
            "rlnOriginYAngst": rng.normal(0, 3, n),
            "rlnClassNumber": rng.integers(1, 3, n),
        }
    )
