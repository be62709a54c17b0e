"""Geometry: RELION's Euler convention, pose conversions, point groups, orientation grids.

One convention for the whole project: RELION ZYZ ``(rot, tilt, psi)`` in degrees and its matrix
``A`` (map coordinates -> particle frame), see :mod:`multirefine.geometry.euler`.
"""

from multirefine.geometry.conversions import (
    axis_angle_to_matrix,
    csparc_pose_to_matrix,
    csparc_pose_to_relion,
    eman_to_matrix,
    eman_to_relion,
    matrix_to_axis_angle,
    matrix_to_csparc_pose,
    matrix_to_eman,
    relion_to_csparc_pose,
    relion_to_eman,
)
from multirefine.geometry.euler import euler_to_matrix, matrix_to_euler, viewing_direction
from multirefine.geometry.grids import (
    angular_distance,
    angular_distance_symmetric,
    directions_to_angles,
    inplane_angles,
    local_orientation_grid,
    local_rotations,
    orientation_grid,
    projection_directions,
    sphere_directions,
)
from multirefine.geometry.symmetry import (
    ASU_REFERENCE_DIRECTION,
    in_asymmetric_unit,
    parse_symmetry,
    symmetry_operators,
    symmetry_order,
)

__all__ = [
    "ASU_REFERENCE_DIRECTION",
    "angular_distance",
    "angular_distance_symmetric",
    "axis_angle_to_matrix",
    "csparc_pose_to_matrix",
    "csparc_pose_to_relion",
    "directions_to_angles",
    "eman_to_matrix",
    "eman_to_relion",
    "euler_to_matrix",
    "in_asymmetric_unit",
    "inplane_angles",
    "local_orientation_grid",
    "local_rotations",
    "matrix_to_axis_angle",
    "matrix_to_csparc_pose",
    "matrix_to_eman",
    "matrix_to_euler",
    "orientation_grid",
    "parse_symmetry",
    "projection_directions",
    "relion_to_csparc_pose",
    "relion_to_eman",
    "sphere_directions",
    "symmetry_operators",
    "symmetry_order",
    "viewing_direction",
]
