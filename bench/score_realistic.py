"""Score a ``multirefine refine`` run folder against a set made by bench/realistic.py.

    python bench/score_realistic.py RUN_FOLDER SET_FOLDER [--iteration N] [--jsonl FILE] [--label TEXT]

Reads ``particles_NN.star`` and ``threed_NN_MM.mrc`` of iteration N (default: the last
written) and prints one row:

* accuracy on the real particles (truth class > 0), output models matched to true classes
  by the Hungarian method; a real particle the run excluded counts as wrong;
* junk (truth class 0): how many went to each model (by the true class the model was
  matched to) and, where the run excludes particles (``rlnClassNumber`` 0, or a true value
  in a flag column named by ``--junk-column``), the junk caught and the real particles lost;
* each model's map against its matched true map: FSC 0.5 and 0.143 after translation-only
  alignment (the run starts from the true maps low-passed, so its frame is theirs), beside
  the half-map resolution the run claims (``convergence.json``);
* the poses of the real particles: the median angle (degrees) between the run's rotation and
  the true one, and the share within 10 degrees (meaningful where the run kept the true
  maps' frame, as from their low-passed copies);
* the limits of ``SET_FOLDER/limits.json`` beside it: the true-pose limit (Bayes-optimal and
  today's least-squares score at the true poses, to Nyquist) and, where computed, the
  searched-pose limit (the same scores, poses searched against the true maps, on a sample).

``--jsonl FILE`` appends the row as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from multirefine.evaluate import classification_accuracy, junk_detection, map_resolution_against
from multirefine.geometry.euler import euler_to_matrix
from multirefine.io.maps import read_map
from multirefine.io.star import read_particles_star


def last_iteration(run: Path) -> int:
    found = [int(m.group(1)) for p in run.glob("particles_*.star") if (m := re.fullmatch(r"particles_(\d+)\.star", p.name))]
    if not found:
        raise SystemExit(f"{run}: no particles_NN.star")
    return max(found)


def _aligned_truth(run_table, truth_table) -> np.ndarray:
    """Truth rows in the run table's order (by image name where both have it)."""
    if len(run_table) != len(truth_table):
        raise SystemExit(f"the run has {len(run_table)} particles, the truth {len(truth_table)}")
    name = "rlnImageName"
    if name in run_table.columns and name in truth_table.columns:
        key = lambda s: s.str.split("@").str[0].astype(int).astype(str) + "@" + s.str.split("@").str[1].str.split("/").str[-1]
        order = {v: i for i, v in enumerate(key(truth_table[name]))}
        rows = [order.get(v) for v in key(run_table[name])]
        if None not in rows:
            return np.asarray(rows)
    return np.arange(len(truth_table))


def pose_errors_deg(run_table, truth_table) -> np.ndarray:
    """Angle (degrees) between each row's rotation in the two tables (RELION Euler angles)."""
    def matrices(t):
        return euler_to_matrix(*(torch.tensor(t[c].to_numpy(dtype=np.float64))
                                 for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))).double()
    relative = matrices(run_table) @ matrices(truth_table).transpose(-1, -2)
    cosine = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return np.degrees(torch.arccos(cosine).numpy())


def score(run: Path, set_dir: Path, iteration: int | None = None, junk_column: str | None = None) -> dict:
    iteration = last_iteration(run) if iteration is None else iteration
    table = read_particles_star(run / f"particles_{iteration:02d}.star").metadata
    truth_table = read_particles_star(set_dir / "truth.star").metadata
    truth_table = truth_table.iloc[_aligned_truth(table, truth_table)].reset_index(drop=True)
    truth = truth_table["rlnClassNumber"].to_numpy()
    classes = table["rlnClassNumber"].to_numpy().astype(np.int64)
    if junk_column:
        classes = np.where(table[junk_column].to_numpy().astype(bool), 0, classes)
    sim = json.loads((set_dir / "simulation.json").read_text())
    apix = float(sim["pixel_size_angstrom"])
    k_true = len(sim["fractions"])
    scored = classification_accuracy(truth, classes)
    k = len(scored.matching)
    true_of_model = {scored.matching[t]: t + 1 for t in range(k)}  # output model - 1 -> true class
    junk = junk_detection(truth, classes)
    maps, fsc = {}, {}
    for t in range(1, k_true + 1):
        model = scored.matching[t - 1] + 1
        path = run / f"threed_{iteration:02d}_{model:02d}.mrc"
        if path.exists():
            maps[t] = model
            fsc[t] = map_resolution_against(read_map(path)[0], read_map(set_dir / f"gt_{t:02d}.mrc")[0], apix, rotate=False)
    claimed = None
    convergence = run / "convergence.json"
    if convergence.exists():
        for entry in json.loads(convergence.read_text()):
            if entry["iteration"] == iteration:
                claimed = {t: entry["resolution_0143_angstrom"][m - 1] for t, m in maps.items()}
    limits_path = set_dir / "limits.json"
    limits = None
    if limits_path.exists():
        saved = json.loads(limits_path.read_text())
        limits = {v: saved["variants"][v][0]["accuracy"] for v in ("bayes", "ls_white") if v in saved["variants"]}
        for v, c in saved.get("searched", {}).get("variants", {}).items():
            limits[f"searched {v}"] = c["accuracy"]
    per_model = np.bincount(classes[truth > 0], minlength=k + 1)
    junk_kinds = {}
    if "mrJunkKind" in truth_table.columns:
        kinds = truth_table["mrJunkKind"].to_numpy()
        for kind in sorted(set(kinds[truth == 0])):
            junk_kinds[kind] = np.bincount(classes[kinds == kind], minlength=k + 1).tolist()
    errors = pose_errors_deg(table[truth > 0], truth_table[truth > 0])
    return {
        "run": str(run),
        "set": set_dir.name,
        "iteration": iteration,
        "accuracy": scored.accuracy,
        "accuracy_of_kept": scored.accuracy_of_kept,
        "n_real": scored.n_real,
        "confusion": scored.confusion.tolist(),
        "real_per_model": per_model[1:].tolist(),
        # the junk by where it went: "excluded", or the true class of the model it went to
        "junk_to": {("excluded" if c == 0 else f"model {c} (true {true_of_model.get(c - 1, '?')})"): n
                    for c, n in enumerate(junk.junk_by_class) if n},
        "junk": junk.to_json(),
        "junk_kind_by_class": junk_kinds,  # kind -> rows per output class (0: excluded)
        "pose_error_median_deg": float(np.median(errors)),
        "pose_within_10_deg": float((errors < 10).mean()),
        "map_of_true_class": maps,
        "fsc_vs_truth_05_0143_angstrom": {t: list(v) for t, v in fsc.items()},
        "claimed_0143_angstrom": claimed,
        "true_pose_limit": limits,
    }


def row(result: dict) -> str:
    fsc = " ".join(
        f"{t}:{a:.1f}/{b:.1f}" + (f" (claims {result['claimed_0143_angstrom'][t]:.1f})" if result["claimed_0143_angstrom"] else "")
        for t, (a, b) in result["fsc_vs_truth_05_0143_angstrom"].items()
    )
    junk = result["junk"]
    junk_text = "no junk" if not junk["n_junk"] else (
        f"junk {junk['n_junk']} -> " + ", ".join(f"{w}: {n}" for w, n in result["junk_to"].items())
        + f"; caught {100 * junk['fraction_caught']:.1f} %, real lost {100 * junk['fraction_lost']:.1f} %"
    )
    limit = result["true_pose_limit"]
    limit_text = "" if not limit else "; limits " + ", ".join(f"{v} {100 * a:.1f} %" for v, a in limit.items())
    kinds = "".join(f"; {kind} -> {counts}" for kind, counts in result["junk_kind_by_class"].items())
    return (f"{result['set']} it {result['iteration']}: accuracy {100 * result['accuracy']:.1f} % of "
            f"{result['n_real']} real (kept: {100 * result['accuracy_of_kept']:.1f} %); poses: median error "
            f"{result['pose_error_median_deg']:.1f} deg, {100 * result['pose_within_10_deg']:.0f} % within 10 deg; "
            f"{junk_text}{kinds}; "
            f"FSC vs truth 0.5/0.143 A per true class {fsc}{limit_text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("set", type=Path)
    parser.add_argument("--iteration", type=int)
    parser.add_argument("--junk-column", help="a particle-table column, true where the run excluded the particle")
    parser.add_argument("--jsonl", type=Path, help="append the result as a JSON line")
    parser.add_argument("--label", help="a label stored with the JSON line")
    args = parser.parse_args(argv)
    result = score(args.run, args.set, args.iteration, args.junk_column)
    if args.label:
        result["label"] = args.label
    print(row(result))
    if args.jsonl:
        with args.jsonl.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
