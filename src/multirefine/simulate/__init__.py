"""Synthetic particle stacks with ground truth (the data of the demo, tests and benchmark).

Maps come from atomic models (:func:`map_from_atoms`) or from MRC files. Particles are
central-slice projections (:mod:`multirefine.fourier.projection`) with uniform random
orientations, random shifts, an astigmatic CTF in RELION's convention and white Gaussian
noise at a stated SNR, defined as the mean variance of the clean images over the noise
variance. Images are then divided by the noise standard deviation, so the noise has unit
variance as in particles normalised by ``relion_preprocess --norm``; the maps keep their own
units, and the refinement has to find the intensity scale between the two, as with real
data. Everything follows the conventions a RELION user has (origins in Å are minus the
particle's displacement from the box centre), so ``relion_reconstruct --ctf`` on
``truth.star`` gives back the maps.

What real stacks have besides, each off by default (and then the stack is bit-identical to
one simulated without it; every one draws from its own random stream, so turning one on
leaves the poses, CTFs, noise and the others' draws as they were):

* a B-factor envelope ``exp(-B k^2 / 4)`` on the signal's amplitude (RELION's convention,
  ``k`` in 1/Å), not modelled in the CTF the STAR files give (``rlnCtfBfactor`` stays 0);
* coloured noise: white noise filtered by a radial power spectrum (:func:`noise_power_shape`),
  scaled so that its variance over the whole image is still the noise variance the SNR sets;
  the expected power per Fourier shell is written to ``simulation.json``;
* a contrast factor per particle (gamma-distributed: mean 1, the SD asked for, always
  positive) multiplying its signal, counted in the clean images' variance;
* a background offset and a linear ramp per image, in units of the noise SD, added after
  the images are scaled to unit noise;
* junk (``rlnClassNumber`` 0): empty boxes (noise only), aggregates (2-6 Gaussian blobs,
  scaled to the mean variance of a clean particle image) and broken particles (projections,
  at the row's pose, of one of up to 4 pieces: a class's map cut by a random plane near its
  centre, a 2 px cosine edge), all through the same CTF, envelope and contrast as particles.

Per-particle truth columns that RELION has no name for start with ``mr`` (see
:data:`TRUTH_COLUMNS`); ``particles.star`` has none of them.
"""

from multirefine.simulate.atoms import (
    AtomicModel,
    map_from_atoms,
    maps_from_models,
    read_atomic_model,
)
from multirefine.simulate.dataset import (
    JUNK_KINDS,
    TRUTH_COLUMNS,
    SimulationParameters,
    simulate_dataset,
)
from multirefine.simulate.noise import noise_power_shape

__all__ = [
    "JUNK_KINDS",
    "TRUTH_COLUMNS",
    "AtomicModel",
    "SimulationParameters",
    "map_from_atoms",
    "maps_from_models",
    "noise_power_shape",
    "read_atomic_model",
    "simulate_dataset",
]
