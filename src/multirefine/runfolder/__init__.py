"""The run folder of ``multirefine refine``, outside the engine: its file names (a contract,
documented in the README; :mod:`multirefine.runfolder.names`), the per-iteration records
(:mod:`multirefine.runfolder.records`), the state ``--continue`` reads
(:mod:`multirefine.runfolder.state`) and the writers the command line hands the engine
(:mod:`multirefine.runfolder.writer`). Nothing here imports the engine or the report.
"""

from multirefine.runfolder.names import (
    CLASS_PARTICLES,
    CONSENSUS,
    CONVERGENCE,
    CONVERGENCE_FIGURE,
    FOCUS_MASK,
    JUNK_PARTICLES,
    MODEL_FINISHED,
    NOISE,
    PARAMETERS,
    STATE,
    classes_name,
    classes_table_name,
    fsc_figure_name,
    fsc_name,
    joined_particles_name,
    map_name,
    mask_name,
    model_folder_name,
    model_particles_name,
    next_free_path,
    particles_iterations,
    particles_name,
    write_json,
)

__all__ = [
    "CLASS_PARTICLES",
    "CONSENSUS",
    "CONVERGENCE",
    "CONVERGENCE_FIGURE",
    "FOCUS_MASK",
    "JUNK_PARTICLES",
    "MODEL_FINISHED",
    "NOISE",
    "PARAMETERS",
    "STATE",
    "classes_name",
    "classes_table_name",
    "fsc_figure_name",
    "fsc_name",
    "joined_particles_name",
    "map_name",
    "mask_name",
    "model_folder_name",
    "model_particles_name",
    "next_free_path",
    "particles_iterations",
    "particles_name",
    "write_json",
]
