"""Bad inputs made by rule, not by hand: every column of a real-shaped STAR file removed or
given a bad value, the file cut at many places, odd bytes, damaged maps and image stacks. The
contract for each, whatever the command: it either works (exit 0) or stops with exit 2 and
one line that is not a traceback; it never changes an input file and never leaves a run folder
behind. The cases are generated from one valid set with a fixed seed, so a failure names a
case that can be made again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers import random_atoms_map

from multirefine.cli.main import main
from multirefine.io.maps import read_map, write_map

SEED = 20261207
BAD_VALUES = ("nan", "abc", "-1", "1e40")
NOT_A_NUMBER = ("nan", "abc")
REQUIRED = ("_rlnImageName", "_rlnDefocusU", "_rlnDefocusV", "_rlnDefocusAngle", "_rlnAngleRot", "_rlnAngleTilt",
            "_rlnAnglePsi", "_rlnOpticsGroup")


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    """A valid set: 60 particles of two maps, box 24, with CTF and poses (truth.star)."""
    root = tmp_path_factory.mktemp("fuzz")
    for k, seed in enumerate((1, 2), 1):
        write_map(root / f"map{k}.mrc", random_atoms_map(24, 120, seed=seed, spread_px=2.5), 1.5)
    assert main(["simulate", str(root / "sim"), "--maps", f"{root}/map1.mrc,{root}/map2.mrc", "--n", "60",
                 "--snr", "1", "--seed", "3"]) == 0
    return root


def _star_lines(valid: Path) -> list[str]:
    return (valid / "sim" / "truth.star").read_text().splitlines(keepends=True)


def _column_cases(lines: list[str]) -> list[tuple[str, str]]:
    """Each particle column removed, and each given each bad value in one row."""
    header = [i for i, line in enumerate(lines) if line.startswith("_rln")]
    start = max(i for i, line in enumerate(lines) if line.strip() == "data_particles")
    columns = [i for i in header if i > start]
    first_row = max(columns) + 1
    cases = []
    for c, i in enumerate(columns):
        name = lines[i].split()[0]
        dropped = [line for j, line in enumerate(lines) if j != i]
        for r in range(first_row - 1, len(dropped)):  # the field out of every row (the others keep their #N)
            fields = dropped[r].split()
            if len(fields) == len(columns):
                dropped[r] = " ".join(f for k, f in enumerate(fields) if k != c) + "\n"
        cases.append((f"without {name}", "".join(dropped)))
        for value in BAD_VALUES:
            bad = list(lines)
            fields = bad[first_row + 3].split()
            fields[c] = value if name != "_rlnImageName" else f"{value}@particles.mrcs"
            bad[first_row + 3] = " ".join(fields) + "\n"
            cases.append((f"{name} {value} in row 4", "".join(bad)))
    return cases


# Optics values no microscope has (or a damaged file holds): each given in the optics row, or
# added as a column; every one must be refused.
OPTICS_BAD = {"_rlnVoltage": ("-1", "0", "1e40"), "_rlnAmplitudeContrast": ("-1", "1e40"),
              "_rlnSphericalAberration": ("1e40",), "_rlnImagePixelSize": ("-1", "0", "1e40"),
              "_rlnImageSize": ("-1", "0", "1e40")}
OPTICS_ADDED = {"_rlnBeamTiltX": "1e40", "_rlnOddZernike": "[1e40,0,0]", "_rlnEvenZernike": "[0,1e40]"}


def _optics_cases(lines: list[str]) -> list[tuple[str, str]]:
    """The optics row given each of :data:`OPTICS_BAD`'s values, or a column of
    :data:`OPTICS_ADDED` (beam tilt, Zernike terms) with a damaged value."""
    end = next(i for i, line in enumerate(lines) if line.strip() == "data_particles")
    header = [i for i, line in enumerate(lines[:end]) if line.startswith("_rln")]
    row = max(header) + 1
    cases = []
    for c, i in enumerate(header):
        name = lines[i].split()[0]
        for value in OPTICS_BAD.get(name, ()):
            bad, fields = list(lines), lines[row].split()
            fields[c] = value
            bad[row] = " ".join(fields) + "\n"
            cases.append((f"optics {name} {value}", "".join(bad)))
    for name, value in OPTICS_ADDED.items():
        bad = list(lines)
        bad[row] = lines[row].rstrip("\n") + f" {value}\n"
        bad.insert(row, f"{name} #{len(header) + 1}\n")
        cases.append((f"optics {name} {value}", "".join(bad)))
    return cases


def _cut_cases(text: str, rng: np.random.Generator, n: int = 12) -> list[tuple[str, str]]:
    """The file cut at ``n`` places spread over it (a copy interrupted, a disk full)."""
    at = sorted(set(rng.integers(1, len(text) - 1, n).tolist()))
    return [(f"cut at byte {a} of {len(text)}", text[:a]) for a in at]


def _star_cases(valid: Path) -> list[tuple[str, bytes]]:
    lines = _star_lines(valid)
    text = "".join(lines)
    rng = np.random.default_rng(SEED)
    cases = [(name, t.encode()) for name, t in (*_column_cases(lines), *_optics_cases(lines),
                                                 *_cut_cases(text, rng))]
    cases.append(("a byte that is not UTF-8", text.encode()[:500] + b"\xff\xfe" + text.encode()[500:]))
    cases.append(("empty", b""))
    cases.append(("the optics table only", text[: text.index("data_particles")].encode()))
    cases.append(("rows doubled", (text + "".join(lines[-20:])).encode()))
    return cases


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _must_refuse(case: str) -> bool:
    """The cases no command may accept: a value that is not a number, a column a reconstruction
    needs missing, a defocus or origin far beyond the physical, a damaged file."""
    name, _, value = case.partition(" ")
    if case.startswith("optics "):
        return True
    if case.endswith("in row 4"):
        value = value.split()[0]
        return (value in NOT_A_NUMBER or (value == "1e40" and ("Defocus" in name and "Angle" not in name
                                                               or "Origin" in name or "OpticsGroup" in name))
                or name in ("_rlnImageName", "_rlnOpticsGroup"))
    if case.startswith("without "):
        return value in REQUIRED
    return not case.startswith("rows doubled")


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse: exit 2 with its usage line
        return int(exc.code or 0)


def _check_contract(argv: list[str], inputs: Path, run: Path | None, capsys, case: str) -> int:
    before = _fingerprint(inputs)
    code = _run(argv)
    captured = capsys.readouterr()
    assert code in (0, 2), f"{case}: exit {code}\n{captured.err}"
    if code == 2:
        err = captured.err.strip()
        assert "Traceback" not in err, f"{case}: {err}"
        assert len(err.splitlines()) == 1 or err.startswith("usage:"), f"{case}: {err}"
    assert _fingerprint(inputs) == before, f"{case}: an input file changed"
    if run is not None and code == 2:
        assert not run.exists() or not any(run.iterdir()), f"{case}: {run} left behind"
    return code


def test_star_files_damaged_by_rule(valid, tmp_path, capsys):
    """Every STAR case through `refine --check` and `reconstruct`: the contract, each case that
    no reader may accept refused by both, and every map that is written finite."""
    cases = _star_cases(valid)
    assert len(cases) > 60
    maps = f"{valid}/map1.mrc,{valid}/map2.mrc"
    for i, (case, data) in enumerate(cases):
        folder = tmp_path / f"case{i:03d}"
        folder.mkdir()
        (folder / "particles.mrcs").symlink_to(valid / "sim" / "particles.mrcs")
        (folder / "truth.star").write_bytes(data)
        star = str(folder / "truth.star")
        checked = _check_contract(["refine", "--input", star, "--models", maps, "--check"], folder, None, capsys, case)
        out = tmp_path / f"out{i:03d}.mrc"
        made = _check_contract(["reconstruct", star, "-o", str(out)], folder, None, capsys, case)
        if _must_refuse(case):
            assert made == 2 and not out.exists(), f"{case}: reconstructed"
            assert checked == 2 or case.startswith("without _rlnAngle"), f"{case}: passed --check"
        if made == 0:
            assert np.isfinite(read_map(out)[0]).all(), f"{case}: a map that is not finite"


def _map_cases(valid: Path) -> list[tuple[str, np.ndarray | bytes, float]]:
    good = random_atoms_map(24, 120, seed=1, spread_px=2.5)
    raw = (valid / "map1.mrc").read_bytes()
    nan = good.copy()
    nan[3, 4, 5] = np.nan
    return [
        ("a map with a NaN", nan, 1.5), ("an all-zero map", np.zeros_like(good), 1.5),
        ("a constant map", np.full_like(good, 3.0), 1.5), ("a map of box 20", good[2:22, 2:22, 2:22], 1.5),
        ("a map at 100 Å/px", good, 100.0), ("a map at 0 Å/px", good, 0.0), ("a map at 0.01 Å/px", good, 0.01),
        ("a map with Inf", np.where(good > good.max() / 2, np.inf, good).astype(np.float32), 1.5),
        ("a map file cut in its header", raw[:500], 0.0), ("a map file cut in its data", raw[:1024 + 4000], 0.0),
        ("a map file that is text", b"not a map\n" * 40, 0.0),
    ]


def _bad_map_folder(folder: Path, data, apix: float) -> Path:
    """A folder holding one damaged map case as ``bad.mrc``."""
    folder.mkdir()
    if isinstance(data, bytes):
        (folder / "bad.mrc").write_bytes(data)
    else:
        write_map(folder / "bad.mrc", np.ascontiguousarray(data, dtype=np.float32), apix)
    return folder


def test_maps_damaged_by_rule(valid, tmp_path, capsys):
    """Every damaged starting map through `refine --check`, and those it refuses through a real
    start (`--iter 1`); a map padded to the box and one without a voxel size (the particles'
    is taken) are accepted."""
    for i, (case, data, apix) in enumerate(_map_cases(valid)):
        folder = _bad_map_folder(tmp_path / f"map{i:02d}", data, apix)
        star = str(valid / "sim" / "particles.star")
        maps = f"{folder}/bad.mrc,{valid}/map2.mrc"
        checked = _check_contract(["refine", "--input", star, "--models", maps, "--check"], folder, None, capsys, case)
        assert checked == 2 or case in ("a map of box 20", "a map at 0 Å/px"), f"{case}: passed --check"
        if checked == 2:  # and a real start refuses it the same way, leaving no run folder
            run = tmp_path / f"run{i:02d}"
            assert _check_contract(["refine", "--input", star, "--models", maps, "--iter", "1", "--nosingle", "--path",
                                    str(run)], folder, run, capsys, case) == 2


def test_masks_damaged_by_rule(valid, tmp_path, capsys):
    """The same damaged maps given as `--mask` (the valid maps as starting maps): `refine --check`
    refuses each in one line (none is a mask: NaN, Inf, values beyond [0, 1], nothing, a cut
    file, a span of 100 Å/px), and a real start refuses them as --check does, leaving no folder."""
    star, maps = str(valid / "sim" / "particles.star"), f"{valid}/map1.mrc,{valid}/map2.mrc"
    for i, (case, data, apix) in enumerate(_map_cases(valid)):
        folder = _bad_map_folder(tmp_path / f"mask{i:02d}", data, apix)
        argv = ["refine", "--input", star, "--models", maps, "--mask", f"{folder}/bad.mrc"]
        assert _check_contract([*argv, "--check"], folder, None, capsys, case) == 2, f"{case}: passed as a mask"
        run = tmp_path / f"masked{i:02d}"
        assert _check_contract([*argv, "--iter", "1", "--nosingle", "--path", str(run)], folder, run, capsys, case) == 2


def test_image_stacks_damaged_by_rule(valid, tmp_path, capsys):
    """The particles' stack cut short or given NaN pixels: `refine` and `reconstruct` stop in one
    line, leave no run folder and no map."""
    raw = (valid / "sim" / "particles.mrcs").read_bytes()
    header = 1024
    frame = 24 * 24 * 4
    nan_frame = bytearray(raw)
    nan_frame[header + 7 * frame + 40: header + 7 * frame + 44] = np.float32(np.nan).tobytes()
    cases = [("the stack cut in its header", raw[:300]), ("the stack cut after 30 images", raw[: header + 30 * frame]),
             ("the stack cut inside image 12", raw[: header + 11 * frame + 100]), ("a NaN in image 8", bytes(nan_frame))]
    for i, (case, data) in enumerate(cases):
        folder = tmp_path / f"stack{i}"
        folder.mkdir()
        (folder / "particles.mrcs").write_bytes(data)
        (folder / "truth.star").write_bytes((valid / "sim" / "truth.star").read_bytes())
        star = str(folder / "truth.star")
        run = tmp_path / f"run{i}"
        assert _check_contract(["refine", "--input", star, "--models", f"{valid}/map1.mrc,{valid}/map2.mrc", "--iter",
                                "1", "--nosingle", "--path", str(run)], folder, run, capsys, case) == 2, case
        out = tmp_path / f"out{i}.mrc"
        assert _check_contract(["reconstruct", star, "-o", str(out)], folder, None, capsys, case) == 2, case
        assert not out.exists(), case
