"""The options of ``multirefine refine`` (and ``e2refinemulti``): their definitions, and the
checks of ``--nmodels`` that need the command line itself (:mod:`multirefine.cli.refine`
resolves them into :class:`multirefine.refine.options.RefineOptions`)."""

from __future__ import annotations

import argparse

from multirefine.errors import InputError

__all__ = ["DEFAULT_KMAX", "add_args", "model_count", "split_list"]

DEFAULT_KMAX = 6  # --nmodels auto


def add_args(parser: argparse.ArgumentParser) -> None:
    from multirefine.refine.options import MAX_ITERATIONS, MIN_ITERATIONS

    p = parser
    p.add_argument("--input", help="particles: RELION STAR, cryoSPARC .cs, EMAN2 .lst/.hdf, .mrcs (needed unless --continue)")
    p.add_argument("--models", help="starting maps, comma-separated, or one file holding K maps")
    p.add_argument("--model", help="one starting map, varied into --nmodels seeds")
    p.add_argument("--nmodels", default="2",
                   help="number of models made from --model (default 2); auto: counted from the data, at most --kmax "
                        "(one model refined first; models then added one split at a time while a split raises the "
                        "cross-validated log-likelihood; the curve and the reason in the report and nmodels.json)")
    p.add_argument("--kmax", type=int, default=DEFAULT_KMAX, help=f"--nmodels auto: at most this many models "
                   f"(default {DEFAULT_KMAX})")
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--randphase", action="store_true", help="seed: phases randomised beyond a low resolution")
    seed.add_argument("--mapfragment", action="store_true", help="seed: a random part of the map removed")
    seed.add_argument("--randclassify", action="store_true", help="seed: particles aligned to the one map, then "
                      "split at random (RELION's Class3D seeding; the default)")
    p.add_argument("--sym", default="c1", help="symmetry for all models, or one per model (c1,c2,...)")
    _add_mask_options(p)
    p.add_argument("--iter", type=int,
                   help=f"iterations (default: until fewer than 1 %% of the particles change model in two iterations "
                        f"running and the resolution stops improving; at least {MIN_ITERATIONS}, at most {MAX_ITERATIONS})")
    p.add_argument("--path", help="run folder (default: the next free multi_NN)")
    p.add_argument("--mass", help="molecular mass in kDa, one or one per model: threshold 1 encloses it")
    p.add_argument("--apix", type=float, help="pixel size in Å (overrides the particle file)")
    p.add_argument("--lst", action="store_true", help="also write each model's particles as an EMAN2 list, "
                   "particles_model_MM.lst, beside particles_model_MM.star (for e2refine_easy --input)")
    p.add_argument("--no-ctf", action="store_true", help="use the images without CTF correction (phase-flipped "
                   "already, or made without a CTF); needed where the particles have no CTF parameters")
    p.add_argument("--usefilt", help="a filtered stack, 1:1 with --input, used for the search only")
    p.add_argument("--targetres", type=float, help="search resolution in Å, held in every iteration (default: "
                   "automatic, from the FSC); e2refinemulti's is the resolution aimed at, which sets its steps")
    p.add_argument("--speed", type=int, default=5, help="1 (fine angular steps) .. 10 (coarse); default 5")
    p.add_argument("--sep", type=int, default=1, help="each particle goes into its N best orientations of its model, weight 1/N (default 1)")
    p.add_argument("--hypotheses", type=int, default=0, metavar="N",
                   help="each particle goes into its N best distinct orientations of its model (each global candidate "
                   "refined on its own), weighted by their posteriors, as RELION marginalises over poses (default 0: its best)")
    p.add_argument("--classkeep", type=float, default=0.85, help="fraction of particles kept in class averages")
    p.add_argument("--classiter", type=int, default=0, help="rounds of re-aligning particles to their class average (default 0)")
    p.add_argument("--m3dkeep", type=float, default=0.9, help="fraction of each model's particles, best-scored first, "
                   "in its map (default 0.9); e2refinemulti's keeps that fraction of the class averages")
    p.add_argument("--shrink", type=int, default=1, help="limit the search to the band a box shrunk by N would hold")
    p.add_argument("--nosingle", action="store_true", help="stop after the multi-model iterations (default: then "
                   "refine each model's particles on their own, gold standard, into model_MM/)")
    p.add_argument("--single", action="store_true",
                   help="refine each model's particles on their own afterwards: the default; with --continue, "
                   "for a run made with --nosingle")
    p.add_argument("--singleiter", type=int, default=8,
                   help="at most this many iterations of each model's own refinement (default 8; it stops "
                   "earlier when the resolution stops improving)")
    p.add_argument("--singleres", type=float, default=30.0,
                   help="each model's own refinement starts from its map low-passed to this resolution, Å "
                   "(default 30)")
    p.add_argument("--lowmem", action="store_true", help="smaller batches")
    p.add_argument("--j", type=int, metavar="N", help="threads here: --parallel thread:N (RELION's --j)")
    p.add_argument("--parallel",
                   help="thread:N (CPU threads here; default: the cores this process may use, SLURM_CPUS_PER_TASK "
                        "or its CPU affinity), or dask:ADDRESS: the searches and "
                        "reconstructions as tasks on a Dask cluster, ADDRESS its scheduler "
                        "(tcp://host:8786) or scheduler file; the workers compute on the CPU (--device auto is then the CPU) "
                        "and must see the particle files by the same absolute paths")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    p.add_argument("--max-shift", type=float, default=5.0, help="largest particle shift searched, px (default 5)")
    p.add_argument("--score", choices=("cc", "ls"), default="ls",
                   help="similarity: least squares (ls, default: classified best in bench/) or normalised "
                   "cross-correlation (cc)")
    p.add_argument("--soft", action="store_true",
                   help="each particle in every model by its posterior (default: its best model only, as "
                   "EMAN2; hard assignment classified better in bench/)")
    p.add_argument("--nosplitmerge", action="store_true",
                   help="no split and merge trials (default, with 3 or more models: iteration 3 and every other "
                   "one after it, not in the last 2, tries merging the most redundant model into the others and "
                   "re-seeding it from half of the largest, and keeps that when the cross-validated likelihood "
                   "grows)")
    _add_data_options(p)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--check", action="store_true", help="check files, sizes, symmetries and options; do not run")
    p.add_argument("--continue", dest="continue_run", metavar="RUN",
                   help="go on with the run in folder RUN after its last finished iteration")


def _add_mask_options(p: argparse.ArgumentParser) -> None:
    """Solvent masks, focused classification and the particle's diameter (multirefine.refine.solvent, focus)."""
    p.add_argument("--mask", metavar="FILE[,FILE...]",
                   help="solvent mask (MRC, values in [0, 1]: 1 kept, 0 solvent), one for all models or one per model: "
                   "each map is multiplied by it after every reconstruction, in place of the soft sphere (RELION's "
                   "--solvent_mask; relion_mask_create makes one); resampled to the particles' grid like the starting "
                   "maps; the run keeps copies (mask_MM.mrc)")
    p.add_argument("--focusmask", metavar="FILE",
                   help="focused classification: the models are compared on this mask's region only (values in [0, "
                   "1]); poses still come from the whole maps, and each particle has the models' common signal "
                   "outside the region subtracted at its pose first (relion_particle_subtract, then RELION's focused "
                   "Class3D), its likelihood summed over the poses near its own; the run keeps a copy (focusmask.mrc)")
    p.add_argument("--write-subtracted", action="store_true",
                   help="with --focusmask: after the iterations, write every particle less the models' common signal "
                   "outside the focus mask at its pose (relion_particle_subtract's output) to "
                   "subtracted/particles_subtracted.star and .mrcs")
    p.add_argument("--particle-diameter", type=float, metavar="A",
                   help="the particle's diameter in Å (RELION's --particle_diameter): the sphere mask of the maps "
                   "(without --mask), the images' background beyond it (--noise coloured, --norm) and the angular "
                   "steps (default: estimated from the starting maps)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """What real stacks need: the noise model, normalisation, intensity scales, junk, local
    searches and a consensus refinement first (multirefine.refine.noise, intensity, ...)."""
    from multirefine.refine.options import SIGMA_ANG_DEG
    p.add_argument("--noise", choices=("white", "coloured"), default="white",
                   help="noise model of the score and the reconstruction: white (default), or coloured: the "
                   "noise power per Fourier shell of each optics group, estimated from the images' backgrounds, "
                   "weights every frequency (RELION's sigma2 noise spectra)")
    p.add_argument("--consensus", action="store_true",
                   help="first refine all particles against the one starting map (gold standard, into consensus/; "
                   "--singleiter and --singleres apply), then seed the models from its map and search locally "
                   "around its poses: for a starting map too featureless to fix the poses")
    p.add_argument("--junk", type=float, metavar="F",
                   help="junk (empty boxes, aggregates, broken particles): a particle whose fitted intensity at its "
                   "best pose (the least-squares scale of the reference in it) is below F times the median is in no "
                   "map and has rlnClassNumber 0 (try 0.5); re-judged every iteration; default: none")
    p.add_argument("--norm", action="store_true",
                   help="normalise each image as it is read (RELION's relion_preprocess --norm, ramp removed): the "
                   "plane fitted to its pixels beyond the particle's radius (+3 px) subtracted, divided by their SD")
    p.add_argument("--scale", action="store_true",
                   help="fit each particle's intensity scale (RELION's scale correction, per particle): its CTF is "
                   "multiplied by it in the search and the reconstruction; estimated after every search at the "
                   "particle's best pose, shrunk to 1 by a prior of SD 0.25; written as mrIntensityScale")
    p.add_argument("--globalsearch", action="store_true",
                   help="search every orientation even when --input holds poses (rlnAngleRot/Tilt/Psi, e.g. from a "
                   "consensus refinement); by default such poses are where local searches start (RELION's "
                   "--sigma_ang), and each later iteration searches around the last one's poses")
    p.add_argument("--sigma_ang", type=float, metavar="DEG",
                   help="local searches (see --globalsearch): weight each pose by a Gaussian prior of this SD (degrees) "
                   "around the particle's last pose, its shift by one of the SD's displacement at the particle's edge "
                   "(RELION's --sigma_ang); the first local pass stays within 3 SD; 0: no prior, the poses free "
                   f"within the local window; default {SIGMA_ANG_DEG:g} (0 with --score cc)")


def split_list(text: str) -> list[str]:
    """A comma-separated option's items."""
    return [t.strip() for t in text.split(",") if t.strip()]


def model_count(args: argparse.Namespace) -> int | str:
    """``--nmodels``: a count of 2 or more (with ``--model``), or auto, which one map,
    symmetry, mask and mass serve (the models are made from the data)."""
    text = str(args.nmodels)
    given = getattr(args, "given", ())
    if text != "auto":
        try:
            count = int(text)
        except ValueError:
            raise InputError(f"--nmodels: {text!r}: expected a number of models or auto") from None
        if args.model and count < 2:
            raise InputError(f"--nmodels {count}: expected 2 or more (or auto)")
        if "kmax" in given:
            raise InputError("--kmax without --nmodels auto: the number of models is given")
        return count
    if args.randphase or args.mapfragment:
        raise InputError("--nmodels auto with " + ("--randphase" if args.randphase else "--mapfragment")
                         + ": the models are made by splitting the particles, not by seeding the map")
    for name, value in (("--sym", args.sym), ("--mask", args.mask)):
        if value and len(split_list(value)) > 1:
            raise InputError(f"--nmodels auto with {name} {value}: give one, for every model (the models are made "
                             "from the data; one --sym and one --mask for all)")
    if args.mass and len(split_list(args.mass)) > 1:
        raise InputError("--nmodels auto with --mass: give one mass, for every model")
    return text
