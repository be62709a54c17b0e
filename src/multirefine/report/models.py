"""The report's summary per model: particles, resolutions, and the caution on a model whose
poses moved far in its own refinement (:mod:`multirefine.refine.posecheck`)."""

from __future__ import annotations

import html
from pathlib import Path

from multirefine import runfolder
from multirefine.refine.posecheck import CAUTION_SHARE, FAR_DEG, PosesMoved
from multirefine.report.tables import table

__all__ = ["MASKED_FSC_NOTE", "models_section"]


MASKED_FSC_NOTE = (
    "<p>Within the mask: the half maps' FSC inside <code>--mask</code>, corrected for what the mask correlates by "
    "itself (relion_postprocess's phase randomisation). Read it as an upper bound: on simulated sets it claimed "
    "0.7-2.8 Å more than the maps held against the truth (BENCHMARKS.md).</p>"
)


def models_section(run: Path, last: dict, singles: dict[int, list[dict]], k: int) -> list[str]:
    """The summary per model: particles and resolution, after the last iteration and on its own
    (with ``--mask``, also within the mask, solvent-corrected), and how far its particles'
    poses moved in its own refinement, with a caution where they moved far
    (:mod:`multirefine.refine.posecheck`)."""
    rows, masked, moved = [], {}, {}
    for m in range(1, k + 1):
        folder = run / runfolder.model_folder_name(m)
        if m in singles and (folder / runfolder.MASKED_FSC).exists():
            masked[m] = runfolder.read_json(folder / runfolder.MASKED_FSC)["resolution_0143_angstrom"]
        if m in singles and (check := PosesMoved.read(folder / runfolder.POSES_MOVED)) is not None:
            moved[m] = check  # a damaged file: InputError naming it, as for the run's other records
    for m in range(k):
        single = singles.get(m + 1)
        check = moved.get(m + 1)
        rows.append([
            f"model {m + 1}", last["particles_per_model"][m], last["resolution_0143_angstrom"][m],
            None if single is None else single[-1]["resolution_0143_angstrom"],
            *([masked.get(m + 1)] if masked else []),
            None if single is None else len(single),
            *([None if check is None else f"{100 * check.far_share:.0f} %" + (" (caution)" if check.caution else "")]
              if moved else []),
        ])
    cautions = [f"<p><b>Caution, model {m}:</b> {html.escape(c.describe())}. Check the claim, do not believe it: "
                f"on simulated sets every map that claimed over 3 Å more than it held had over {100 * CAUTION_SHARE:.0f} % "
                "of its poses moved so, and so did some whose claims held (BENCHMARKS.md, \"Poses that move in a "
                "model's own refinement\").</p>" for m, c in moved.items() if c.caution]
    return [
        "<h2>Models</h2>",
        table(
            ["model", "particles", "half maps, FSC 0.143 (Å)", "refined on its own, FSC 0.143 (Å)",
             *(["on its own, within the mask (solvent-corrected), Å"] if masked else []), "its iterations",
             *([f"poses moved > {FAR_DEG:g}° on its own"] if moved else [])],
            rows, left=1,
        ),
        *([MASKED_FSC_NOTE] if masked else []),
        (
            "<p>The multi-model iterations' half maps are aligned against the full maps; the resolution "
            "after each model's own refinement comes from independent half-sets (gold standard).</p>"
        ),
        *cautions,
    ]
