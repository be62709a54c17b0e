"""Whether a model's poses held from the classification to its own refinement: a caution on
the half maps' claim.

Each model's own refinement (:mod:`multirefine.refine.single`) starts both half-sets from the
classification's map low-passed to 30 Å and searches every pose again. Where the data fix a
state's poses, the refinement finds them again near where the classification left them;
where they do not (a small state, nearly symmetric at the first iterations' resolution),
many particles end in a turned frame, more than :data:`FAR_DEG` from their classification
pose. Such a map's half maps can claim more than the map holds: both halves start from the
one map, so a wrong shape at low resolution is shared, and the two half-sets settle on the
same wrong poses, which their FSC cannot see.

Measured on simulated sets against the truth (BENCHMARKS.md, "Poses that move in a model's
own refinement"; 18 maps, 6 sets): every map whose claim was more than 3 Å better than its
truth had 23-75 % of its particles move that far, every map with at most 11 % so moved
claimed within 0.6 Å of its truth, and five of the eleven maps above :data:`CAUTION_SHARE`
claimed within 2 Å. So it is a caution, not a verdict: above the share the map's poses are
not all fixed by its data, and its claim is to be checked (a start from another map, a
tighter mask, more particles), not believed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from multirefine.errors import InputError
from multirefine.geometry.euler import euler_to_matrix, rotation_change_deg
from multirefine.runfolder.names import read_json

__all__ = ["CAUTION_SHARE", "FAR_DEG", "PosesMoved", "poses_moved"]

FAR_DEG = 100.0  # a pose this far from where it was is in another frame, not refined (a random pair: 76 %)
CAUTION_SHARE = 0.20  # the share so moved above which a claim is cautioned: below the 23 % of the least-moved map
# that claimed over 3 Å too much, above the 11 % of an honest one (BENCHMARKS.md; set from those 18 maps)

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


@dataclass(frozen=True)
class PosesMoved:
    """How far a model's particles' poses moved from its classification to its own refinement."""

    particles: int
    median_deg: float
    far_share: float  # the share moved more than ``far_deg``
    far_deg: float = FAR_DEG

    @property
    def caution(self) -> bool:
        return self.far_share > CAUTION_SHARE

    def to_json(self) -> dict:
        return {**asdict(self), "caution_share": CAUTION_SHARE, "caution": self.caution}

    @classmethod
    def read(cls, path: Path) -> PosesMoved | None:
        """What :meth:`to_json` wrote to ``path`` (None where there is no such file);
        InputError naming it where it is damaged."""
        if not path.exists():
            return None
        record = read_json(path)  # InputError naming it where it is cut short or not JSON
        try:
            moved = cls(int(record["particles"]), float(record["median_deg"]), float(record["far_share"]),
                        float(record["far_deg"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError(f"{path}: damaged, not readable ({exc!r})") from None
        if not (moved.particles > 0 and 0 <= moved.far_share <= 1 and 0 <= moved.median_deg <= 180):
            raise InputError(f"{path}: damaged, values out of range ({record})")
        return moved

    def describe(self) -> str:
        """One line: the figures, and the caution where there is one."""
        line = (f"{100 * self.far_share:.0f} % of its particles' poses moved more than {self.far_deg:g}° from the "
                f"classification's (median {self.median_deg:.0f}°)")
        if self.caution:
            line += ("; its poses are not all fixed by its data, and its half maps, which share their start, may "
                     "claim more than the map holds")
        return line


def poses_moved(before: pd.DataFrame, after: pd.DataFrame, operators: np.ndarray) -> PosesMoved | None:
    """The poses of ``after`` against those of ``before``, row for row (the same particles),
    the smallest angle over the symmetry's ``operators``, over the rows whose poses are finite
    in both; None where ``before`` holds no poses (a refinement of particles that had none)."""
    if not all(c in before.columns for c in _ANGLES):
        return None
    start = before.loc[:, list(_ANGLES)].to_numpy(dtype=np.float64)
    end = after.loc[:, list(_ANGLES)].to_numpy(dtype=np.float64)
    finite = np.isfinite(start).all(axis=1) & np.isfinite(end).all(axis=1)
    if not finite.any():
        return None
    moved = rotation_change_deg(euler_to_matrix(*start[finite].T), euler_to_matrix(*end[finite].T),
                                np.asarray(operators, dtype=np.float64))
    return PosesMoved(len(moved), float(np.median(moved)), float(np.mean(moved > FAR_DEG)))
