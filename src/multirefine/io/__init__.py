"""Particle and map input/output.

Particles from RELION STAR, cryoSPARC ``.cs``, MRC stacks and EMAN2 ``.lst``/``.hdf`` come
through one factory, :func:`open_particles`, as a lazy :class:`ParticleStack` whose
``metadata`` is the canonical RELION-3.1-named table of :mod:`multirefine.io.columns`.
Maps are read and written by :mod:`multirefine.io.maps`; STAR files are written by
:func:`write_particles_star`.
"""

from __future__ import annotations

from multirefine.io.maps import MrcStackWriter, read_map, read_maps, write_map, write_stack
from multirefine.io.particles import ParticleStack, open_particles, open_usefilt
from multirefine.io.star import read_particles_star, write_particles_star

__all__ = [
    "MrcStackWriter",
    "ParticleStack",
    "open_particles",
    "open_usefilt",
    "read_map",
    "read_maps",
    "read_particles_star",
    "write_map",
    "write_particles_star",
    "write_stack",
]
