"""Split particles into one STAR file per model (class), or keep chosen classes together.

SOURCE is a run folder of `multirefine refine` (its particles_II.star, the last iteration
unless --iteration says which) or any particle STAR file with rlnClassNumber, e.g.
RELION's Class3D run_itNNN_data.star. Each class goes to particles_model_MM.star, as
`refine` writes the final sets; --join writes the chosen classes into one file instead
(RELION's subset selection: keep the good classes, refine them on). Every column and the
optics groups are kept; the image names are written as they were read. Nothing is
overwritten: a file that already exists is an error.

examples:
  multirefine split multi_01 --iteration 4                  # multi_01/split_04/particles_model_MM.star
  multirefine split Class3D/job012/run_it025_data.star --classes 1,3 --join --out good
"""

from __future__ import annotations

import argparse
from pathlib import Path

from multirefine.errors import InputError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="run folder (multi_NN) or particle STAR file with rlnClassNumber")
    parser.add_argument("--iteration", type=int, help="with a run folder: which particles_II.star (default the last)")
    parser.add_argument("--classes", help="classes (models) to write, e.g. 1,3 (default all)")
    parser.add_argument("--join", action="store_true", help="write the chosen classes into one file")
    parser.add_argument("--out", help="output folder (default RUN/split_II, or STEM_split beside a STAR file)")


def source_star(source: Path, iteration: int | None) -> tuple[Path, Path]:
    """The particle table to split and the default output folder."""
    from multirefine import runfolder  # imports the package: kept off the CLI's start-up

    if source.is_file():
        if iteration is not None:
            raise InputError(f"{source}: --iteration needs a run folder, not a STAR file")
        return source, source.with_name(f"{source.stem}_split")
    if not source.is_dir():
        raise InputError(f"{source}: no such run folder or STAR file")
    found = runfolder.particles_iterations(source)
    if not found:
        raise InputError(f"{source}: no particles_II.star in the folder; is it a run folder of multirefine refine?")
    if iteration is None:
        iteration = found[-1]
    elif iteration not in found:
        raise InputError(
            f"{source}: no {runfolder.particles_name(iteration)} (iterations here: "
            f"{', '.join(map(str, found))})"
        )
    return source / runfolder.particles_name(iteration), source / f"split_{iteration:02d}"


def parse_classes(text: str | None, present: list[int], star: Path) -> list[int]:
    """The classes asked for (all present ones by default), each checked against the file."""
    if text is None:
        return present
    try:
        asked = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise InputError(f"--classes {text!r}: expected class numbers separated by commas, e.g. 1,3") from None
    missing = [c for c in asked if c not in present]
    if missing or not asked:
        raise InputError(
            f"{star}: rlnClassNumber has no class {', '.join(map(str, missing)) or '(none given)'} "
            f"(classes here: {', '.join(map(str, present))})"
        )
    return sorted(set(asked))


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from multirefine import runfolder
    from multirefine.io.columns import CLASS_NUMBER, IMAGE_NAME
    from multirefine.io.images import ImageResolver, relocated_image_files
    from multirefine.io.star import read_particles_star, write_particles_star

    star, default_out = source_star(Path(args.source), args.iteration)
    particles = read_particles_star(star)
    table = particles.metadata
    if CLASS_NUMBER not in table.columns:
        raise InputError(f"{star}: no {CLASS_NUMBER} column in data_particles; nothing to split by")
    classes = table[CLASS_NUMBER].to_numpy()
    if (classes != classes.astype(int)).any():
        raise InputError(f"{star}: {CLASS_NUMBER} holds values that are not whole class numbers")
    classes = classes.astype(int)
    chosen = parse_classes(args.classes, sorted(set(classes.tolist())), star)
    out = Path(args.out) if args.out else default_out
    if args.join:
        groups = {runfolder.joined_particles_name(chosen): chosen}
    else:
        groups = {runfolder.model_particles_name(c): [c] for c in chosen}
    existing = [out / name for name in groups if (out / name).exists()]
    if existing:
        raise InputError(f"{existing[0]}: exists; nothing was written (give another --out)")
    try:  # names that find the images from the new folder as they did from the old
        image_files = relocated_image_files(table[IMAGE_NAME], ImageResolver(star, [star.parent, Path.cwd()]), out)
    except InputError as error:
        print(f"warning: {error}; image names are written as they are")
        image_files = None
    out.mkdir(parents=True, exist_ok=True)
    for name, members in groups.items():
        rows = np.isin(classes, members)
        write_particles_star(out / name, table[rows], particles.optics, image_files=image_files)
        print(f"{out / name}: {rows.sum()} particles (class {', '.join(map(str, members))})")
    written = int(np.isin(classes, chosen).sum())
    print(f"split {star}: {len(table)} particles, {written} written, {len(table) - written} in other classes")
    return 0
