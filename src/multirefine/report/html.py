"""The run folder's report, ``index.html``: what the run did and how far it got, in one page.

Made from the run folder's own files only (``0_refine_parms.json``, ``convergence.json``,
the last ``fsc_II.json``, ``threed_II_MM.mrc``, ``classes_II.mrcs`` / ``.star`` and each
``model_MM/``), so it can be rebuilt at any time (``multirefine report RUN``); the driver
rebuilds it after every iteration and after each model's own refinement. Its figures go
to ``report/`` in the run folder:

- a summary per model: particles, half-map resolution (FSC 0.143) after the last
  iteration and after the model's own refinement;
- the convergence over iterations (``convergence.png``) and its table;
- the half-map FSC of the last iteration (``fsc_II.png``);
- central sections and projections of every model's last map and of its refined map;
- the most populated class averages of every model;
- each model's particles per viewing direction on a map of the sphere (``directions_II.png``);
- each model's own refinement: its FSC curve and iterations;
- a slider over the iterations (when the run folder holds their figures): the FSC, maps,
  class averages and viewing directions of any iteration, in the page itself.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import mrcfile
import numpy as np
import starfile

from multirefine import runfolder
from multirefine.errors import InputError
from multirefine.io.atomic import atomic_path
from multirefine.io.maps import read_map
from multirefine.report.models import models_section
from multirefine.report.plots import (
    plot_class_montage,
    plot_convergence,
    plot_directions,
    plot_fsc,
    plot_map_sections,
    plot_model_count,
    plot_noise_spectra,
)
from multirefine.report.tables import fmt as _fmt
from multirefine.report.tables import table as _table
from multirefine.runfolder.record import COMMANDS, LOG

__all__ = ["REPORT", "update_report", "write_report", "write_report_safely"]

log = logging.getLogger(__name__)

REPORT = "index.html"
FIGURES = "report"
CLASSES_PER_MODEL = 8

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.left, th.left { text-align: left; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
p.control { position: sticky; top: 0; background: #fff; padding: 0.4em 0; margin: 0; border-bottom: 1px solid #ddd; }
"""


def _number(iteration: int) -> str:
    """An iteration number in a heading, which the iteration control changes."""
    return f'<span class="iteration">{iteration}</span>'


def _per_iteration(src: str, iteration: int, alt: str, patterns: list[str]) -> str:
    """An image made for every iteration (``src`` names this one), listed in ``patterns``."""
    pattern = src.replace(f"_{iteration:02d}.png", "_II.png")
    patterns.append(pattern)
    return f'<img src="{src}" data-pattern="{pattern}" alt="{html.escape(alt)}">'


def _iteration_control(run: Path, iteration: int, patterns: list[str]) -> str | None:
    """A slider over the iterations whose figures are all in the run folder (the driver
    rebuilds the report after each, so a run keeps every iteration's), or None when only
    the last has them. It swaps each figure and the iteration in its heading; no server,
    no library: the page stays one file with its figures beside it."""
    done = [i for i in range(1, iteration + 1)
            if all((run / p.replace("_II.png", f"_{i:02d}.png")).exists() for p in patterns)]
    if len(done) < 2:
        return None
    return (
        f'<p class="control">Figures after iteration <input type="range" id="iteration" autocomplete="off" min="0" '
        f'max="{len(done) - 1}" value="{len(done) - 1}" data-iterations="{json.dumps(done)}"> '
        f'<b>{_number(iteration)}</b> (slide to see how the run got there)</p>'
        "<script>(() => { const slider = document.getElementById('iteration');"
        " const done = JSON.parse(slider.dataset.iterations);"
        " slider.addEventListener('input', () => { const it = done[slider.value];"
        " document.querySelectorAll('img[data-pattern]').forEach(img => {"
        " img.src = img.dataset.pattern.replace('_II.png', '_' + String(it).padStart(2, '0') + '.png'); });"
        " document.querySelectorAll('span.iteration').forEach(span => { span.textContent = it; }); }); })();"
        "</script>"
    )


def _single_runs(run: Path, k: int, iteration: int) -> dict[int, list[dict]]:
    """Model -> its own refinement's statistics, for the models that have one made from the
    run's last iteration (or one in progress); a refinement that ``finished.json`` says was
    made after an earlier iteration is not this model's any more."""
    found = {}
    for m in range(1, k + 1):
        folder = run / runfolder.model_folder_name(m)
        path, marker = folder / runfolder.CONVERGENCE, folder / runfolder.MODEL_FINISHED
        if marker.exists() and runfolder.read_json(marker).get("after_iteration") != iteration:
            continue
        if path.exists():
            found[m] = runfolder.read_json(path)
    return found


def _classes_table(run: Path, iteration: int):
    """``classes_II.star``: model, direction and particles of each class average (None: none)."""
    path = run / runfolder.classes_table_name(iteration)
    if not path.exists():
        return None
    table = starfile.read(path)
    return table["classes"] if isinstance(table, dict) else table


def _with_symmetry_mates(rot: np.ndarray, tilt: np.ndarray, count: np.ndarray, symmetry: str):
    """Directions over a symmetry's asymmetric unit and their mates under its operators,
    each mate with its direction's particles: the whole sphere, as the map sees it."""
    from multirefine.geometry.euler import viewing_direction
    from multirefine.geometry.grids import directions_to_angles
    from multirefine.geometry.symmetry import symmetry_operators

    operators = symmetry_operators(symmetry)
    if len(operators) == 1:
        return rot, tilt, count
    # A direction d's mates are L d for every L of the group.
    mates = np.einsum("gij,nj->gni", operators, viewing_direction(rot, tilt)).reshape(-1, 3)
    return (*directions_to_angles(mates), np.tile(count, len(operators)))


def _directions(run: Path, iteration: int, particles: list[int], symmetries: list[str], figures: Path) -> str | None:
    """Each model's particles per viewing direction (the class averages' directions and
    sizes, with their symmetry mates), as one figure (its name); ``particles``: each model's
    particles in all."""
    k = len(particles)
    table = _classes_table(run, iteration)
    if table is None or not len(table):
        return None
    model = table["rlnClassNumber"].to_numpy()
    directions = []
    for m in range(1, k + 1):
        rot, tilt, count = (table[column].to_numpy(dtype=np.float64)[model == m]
                            for column in ("rlnAngleRot", "rlnAngleTilt", _count_column(table)))
        symmetry = symmetries[m - 1] if len(symmetries) == k else "c1"
        directions.append(_with_symmetry_mates(rot, tilt, count, symmetry))
    name = f"directions_{iteration:02d}.png"
    plot_directions(directions, [f"model {m}: {particles[m - 1]} particles" for m in range(1, k + 1)], figures / name)
    return name


def _count_column(table) -> str:
    """The particles in each class: their own column, or (files before it) rlnClassDistribution."""
    return runfolder.CLASS_PARTICLES if runfolder.CLASS_PARTICLES in table.columns else "rlnClassDistribution"


def _class_montage(run: Path, iteration: int, k: int, figures: Path) -> str | None:
    """The most populated class averages of every model, as one figure (its name)."""
    stack_path = run / runfolder.classes_name(iteration)
    table = _classes_table(run, iteration)
    if table is None or not stack_path.exists():
        return None
    with mrcfile.open(stack_path, permissive=True) as mrc:
        averages = np.asarray(mrc.data, dtype=np.float32)
    if averages.ndim == 2:
        averages = averages[None]
    picks, labels = [], []
    for m in range(1, k + 1):
        own = np.nonzero(table["rlnClassNumber"].to_numpy() == m)[0]
        size = table[_count_column(table)].to_numpy()[own]
        for i in own[np.argsort(-size, kind="stable")][:CLASSES_PER_MODEL]:
            picks.append(i)
            labels.append(f"model {m}: {table[_count_column(table)].iloc[i]:.0f}")
    if not picks:
        return None
    name = f"classes_{iteration:02d}.png"
    plot_class_montage(averages[picks], labels, figures / name, columns=CLASSES_PER_MODEL)
    return name


def _split_merge_text(trial: dict | None) -> str:
    """An iteration's split and merge trial in words ('' where none was tried)."""
    if not trial:
        return ""
    return (f"model {trial['dissolved']} merged, model {trial['split']} split: "
            f"{trial['gain']:+.0f} ({'kept' if trial['kept'] else 'not kept'})")


def _heading(run: Path, parms: dict, stats: list[dict], k: int, iteration: int) -> list[str]:
    """The page's title and what the run was: input, models, symmetry, seeding, progress, and
    the commands that wrote it (``0_refine_parms.json``'s record of each)."""
    planned = (f"at most {parms['iterations']}, until the assignment settles" if parms.get("until_settled")
               else parms.get("iterations", iteration))
    commands = [
        [c.get("started", ""), c.get("command_line", ""), c.get("version", ""), c.get("host", ""),
         f"{c.get('device', '')}, {c.get('parallel', '')} ({c.get('threads', '')} threads here)"]
        for c in parms.get(COMMANDS, [])
    ]
    return [
        f"<h1>multirefine run <code>{html.escape(run.name)}</code></h1>",
        (
            f"<p>{html.escape(str(parms.get('input', '')))}: {k} models, symmetry "
            f"{html.escape(','.join(parms.get('symmetries', [])))}, "
            f"seeding {html.escape(str(parms.get('seeding', '')))}; "
            f"{iteration} iterations done ({html.escape(str(planned))}), "
            f"{sum(s['seconds'] for s in stats):.0f} s.</p>"
        ),
        *([_table(["started", "command", "version", "host", "device, threads"], commands, left=5)] if commands else []),
    ]


def _files_section(run: Path, iteration: int, k: int) -> list[str]:
    """Links to the run's files: the last iteration's maps and particles, each model's set and
    its own refinement's maps, the options and the log."""
    names = [runfolder.particles_name(iteration), *(runfolder.map_name(iteration, m) for m in range(1, k + 1)),
             *(runfolder.model_particles_name(m) for m in range(1, k + 1)), runfolder.JUNK_PARTICLES]
    for m in range(1, k + 1):
        folder = runfolder.model_folder_name(m)
        names += [f"{folder}/threed_final.mrc", f"{folder}/half1_unfil.mrc", f"{folder}/half2_unfil.mrc",
                  f"{folder}/particles_final.star"]
    names += [runfolder.mask_name(m) for m in range(1, k + 1)] + [runfolder.FOCUS_MASK]
    names += [runfolder.PARAMETERS, runfolder.CONVERGENCE, runfolder.NMODELS, LOG]
    links = [f'<a href="{html.escape(n, quote=True)}">{html.escape(n)}</a>' for n in names if (run / n).exists()]
    return ["<h2>Files</h2>", f"<p>{' · '.join(links)}</p>"] if links else []


def _noise_section(run: Path, figures: Path) -> list[str]:
    """The noise model's spectra (``noise.json``, ``--noise coloured``), where the run has one."""
    path = run / runfolder.NOISE
    if not path.exists():
        return []
    noise = runfolder.read_json(path)
    plot_noise_spectra(noise, figures / "noise.png")
    text = ("<p>Noise power per Fourier shell of each optics group, from the images' backgrounds (relative "
            "units); every frequency of the score and the reconstruction is weighted by its inverse.</p>")
    return ["<h2>Noise</h2>", text, f'<img src="{FIGURES}/noise.png" alt="noise spectra">']


def _count_section(run: Path, figures: Path) -> list[str]:
    """``--nmodels auto``: the number of models chosen, why, and the curve (``nmodels.json``)."""
    path = run / runfolder.NMODELS
    if not path.exists():
        return []
    count = runfolder.read_json(path)
    plot_model_count(count, figures / runfolder.NMODELS_FIGURE)
    rows = "".join(
        f"<tr><td>{s['models']}</td><td>{'-' if s['split'] is None else s['split']}</td><td>"
        + ("-" if s["gain_per_particle"] is None else f"{s['gain_per_particle']:+.3f}")
        + f"</td><td>{'yes' if s['kept'] else 'no'}</td><td>{s['particles_per_model'] or '-'}</td></tr>"
        for s in count["steps"])
    return ["<h2>Number of models</h2>",
            (f"<p><b>{count['chosen']}</b> models, counted from the data (<code>--nmodels auto</code>): "
             f"{html.escape(count['reason'])}. Each step tries each model split in two ({count['rounds']} rounds of "
             "classification at fixed poses), searches every particle again in all the models for the best split, "
             "and keeps it if it raises the cross-validated mixture log-likelihood (each particle scored against "
             f"maps made without it) by more than {count['min_gain_per_particle']} per particle over the models "
             "before it at the same poses; the curve's steps also hold what the searches gained for every model.</p>"),
            f'<img src="{FIGURES}/{runfolder.NMODELS_FIGURE}" alt="number of models">',
            ("<table><tr><th>models</th><th>model split</th><th>gain per particle</th><th>kept</th>"
            f"<th>particles per model</th></tr>{rows}</table>")]


def _convergence_section(run: Path, stats: list[dict]) -> list[str]:
    """The convergence figure (when made) and the table of every iteration."""
    parts = ["<h2>Convergence</h2>"]
    if (run / runfolder.CONVERGENCE_FIGURE).exists():
        parts.append(f'<img src="{runfolder.CONVERGENCE_FIGURE}" alt="convergence">')
    junk = any(s.get("junk_particles") is not None for s in stats)  # --junk
    parts.append(_table(
        ["iteration", "seconds", "search to (Å)", "global step (°)", "local step (°)", "changed model (%)",
         "particles per model", *(["junk (in no map)"] if junk else []), "in the maps (--m3dkeep)",
         "half maps, FSC 0.143 (Å)", "split and merge"],
        [[s["iteration"], float(s["seconds"]), s["band_resolution_angstrom"], s["coarse_step_deg"], s["fine_step_deg"],
          None if s["fraction_changed_model"] is None else 100 * s["fraction_changed_model"],
          ", ".join(str(c) for c in s["particles_per_model"]),
          *([s.get("junk_particles")] if junk else []),
          ", ".join(f"{c:.0f}" for c in s.get("particles_in_maps") or []),
          ", ".join(_fmt(r) for r in s["resolution_0143_angstrom"]),
          _split_merge_text(s.get("split_merge"))] for s in stats],
    ))
    if junk and stats[-1].get("junk_particles"):
        parts.append(f"<p>{stats[-1]['junk_particles']} particles fit no model after iteration {stats[-1]['iteration']} "
                     f"(--junk): in no map, listed in {runfolder.JUNK_PARTICLES}.</p>")
    return parts


def _map_sections(run: Path, iteration: int, k: int, singles: dict[int, list[dict]], figures: Path) -> str | None:
    """Central sections and projections of every model's last map and of its refined map,
    as one figure (its name; None: no map)."""
    maps, labels, masks = [], [], []
    focus_file = run / runfolder.FOCUS_MASK  # --focusmask: drawn where no --mask is
    focus = read_map(focus_file)[0] if focus_file.exists() else None
    for m in range(1, k + 1):
        mask_file = run / runfolder.mask_name(m)  # --mask: the run's copy
        mask = read_map(mask_file)[0] if mask_file.exists() else focus
        path = run / runfolder.map_name(iteration, m)
        if path.exists():
            maps.append(read_map(path)[0])
            labels.append(f"model {m}, it. {iteration}")
            masks.append(mask)
        final = run / runfolder.model_folder_name(m) / "threed_final.mrc"
        if m in singles and final.exists():
            maps.append(read_map(final)[0])
            labels.append(f"model {m}, own")
            masks.append(mask)
    if not maps:
        return None
    name = f"maps_{iteration:02d}.png"
    plot_map_sections(maps, labels, figures / name, masks)
    return name


def _iterations_section(
    run: Path, iteration: int, last: dict, symmetries: list[str], singles: dict[int, list[dict]], figures: Path
) -> str:
    """The figures made for every iteration (FSC, maps, class averages, viewing directions),
    one iteration at a time, under the slider over the iterations."""
    k = len(last["particles_per_model"])
    # "II" for the iteration's number in patterns.
    patterns, shown = [], []
    if (run / runfolder.fsc_figure_name(iteration)).exists():
        shown.append(f"<h2>FSC after iteration {_number(iteration)}</h2>")
        shown.append(_per_iteration(runfolder.fsc_figure_name(iteration), iteration, "FSC", patterns))
    maps = _map_sections(run, iteration, k, singles, figures)
    if maps:
        shown.append(f"<h2>Maps after iteration {_number(iteration)}</h2>")
        if (run / runfolder.mask_name(1)).exists():
            shown.append("<p>Red: each model's solvent mask (<code>--mask</code>), its 0.5 contour over the sections and "
                         "its outline over the projections.</p>")
        elif (run / runfolder.FOCUS_MASK).exists():
            shown.append("<p>Red: the focus mask (<code>--focusmask</code>), the region the models are compared on, its "
                         "0.5 contour over the sections and its outline over the projections.</p>")
        shown.append(_per_iteration(f"{FIGURES}/{maps}", iteration, "map sections", patterns))
    montage = _class_montage(run, iteration, k, figures)
    if montage:
        shown.append(f"<h2>Class averages after iteration {_number(iteration)}</h2>")
        shown.append(f"<p>The {CLASSES_PER_MODEL} most populated of each model (label: particles).</p>")
        shown.append(_per_iteration(f"{FIGURES}/{montage}", iteration, "class averages", patterns))
    directions = _directions(run, iteration, last["particles_per_model"], symmetries, figures)
    if directions:
        shown.append(f"<h2>Viewing directions after iteration {_number(iteration)}</h2>")
        shown.append("<p>Each model's particles per projection direction on an equal-area map of the sphere: rot "
                     "across, tilt from 0 (top) to 180° (bottom); colour: the particles in that direction's class "
                     "average (the best <code>--classkeep</code> of them). A symmetric model's directions are "
                     "drawn with their symmetry mates. A region with none is a view the data lack (preferred "
                     "orientation).</p>")
        shown.append(_per_iteration(f"{FIGURES}/{directions}", iteration, "viewing directions", patterns))
    control = _iteration_control(run, iteration, patterns)
    # The slider stays on screen over these figures only (sticky within their division).
    return f'<div class="iterations">{control or ""}{"".join(shown)}</div>'


def _singles_section(run: Path, singles: dict[int, list[dict]], figures: Path) -> list[str]:
    """Each model's own refinement: its iterations, and one figure of their FSC curves."""
    if not singles:
        return []
    parts = ["<h2>Each model refined on its own</h2>"]
    curves, names, shells = [], [], None
    for m, single in singles.items():
        fsc_path = run / runfolder.model_folder_name(m) / f"fsc_{single[-1]['iteration']:02d}.json"
        if fsc_path.exists():
            fsc = runfolder.read_json(fsc_path)
            curves.append(fsc["half_map_fsc"][0])
            names.append(m)
            shells = fsc["shell_frequency_per_angstrom"]
        parts.append(f"<h3>model {m} (<code>{runfolder.model_folder_name(m)}/</code>)</h3>")
        parts.append(_table(
            ["iteration", "seconds", "search to (Å)", "global step (°)", "local step (°)", "particles",
             "half maps, FSC 0.143 (Å)", "median change of orientation (°)"],
            [[s["iteration"], float(s["seconds"]), s["band_resolution_angstrom"], s["coarse_step_deg"],
              s["fine_step_deg"], s["particles"], s["resolution_0143_angstrom"], s["median_rotation_change_deg"]]
             for s in single],
        ))
    if curves:
        plot_fsc({"shell_frequency_per_angstrom": shells, "half_map_fsc": curves}, figures / "single_fsc.png",
                 "each model on its own", labels=[f"model {m}" for m in names])
        parts.append(f'<img src="{FIGURES}/single_fsc.png" alt="FSC of each model on its own">')
    return parts


def write_report(run: str | Path) -> Path:
    """Write ``run/index.html`` (and its figures in ``run/report/``); return its path."""
    run = Path(run)
    convergence_path = run / runfolder.CONVERGENCE
    if not convergence_path.exists():
        raise InputError(f"{run}: no {runfolder.CONVERGENCE}; not a run folder, or no iteration has finished")
    stats = runfolder.read_json(convergence_path)
    parms_path = run / runfolder.PARAMETERS
    parms = runfolder.read_json(parms_path) if parms_path.exists() else {}
    last = stats[-1]
    iteration, k = last["iteration"], len(last["particles_per_model"])
    figures = run / FIGURES
    figures.mkdir(exist_ok=True)
    singles = _single_runs(run, k, iteration)
    parts = [
        *_heading(run, parms, stats, k, iteration),
        *models_section(run, last, singles, k),
        *_files_section(run, iteration, k),
        *_count_section(run, figures),
        *_convergence_section(run, stats),
        *_noise_section(run, figures),
        _iterations_section(run, iteration, last, parms.get("symmetries", []), singles, figures),
        *_singles_section(run, singles, figures),
    ]
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>multirefine {html.escape(run.name)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    out = run / REPORT
    with atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return out


def write_report_safely(run: str | Path) -> None:
    """Rebuild the run's ``index.html``; a failure is logged, and the run goes on."""
    try:
        write_report(run)
    except Exception as exc:  # noqa: BLE001 -- the report must never cost a run its results
        log.warning("the report %s could not be written: %s", Path(run) / REPORT, exc)


def update_report(run: str | Path, iteration: int) -> None:
    """After an iteration's files are written: its figures (``convergence.png``,
    ``fsc_II.png``, from ``convergence.json`` and ``fsc_II.json``) and the report."""
    run = Path(run)
    plot_convergence(runfolder.read_json(run / runfolder.CONVERGENCE), run / runfolder.CONVERGENCE_FIGURE)
    fsc = runfolder.read_json(run / runfolder.fsc_name(iteration))
    plot_fsc(fsc, run / runfolder.fsc_figure_name(iteration), f"iteration {iteration}")
    write_report_safely(run)
