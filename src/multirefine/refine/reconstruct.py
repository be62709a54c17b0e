"""Reconstruct maps from a particle stack whose poses are known.

One pass over the stack in batches fills one Fourier accumulator per (class, half-set);
the accumulators are sums, so the pass can be split across devices or workers and the
results added. A map is then the Wiener estimate of
:meth:`multirefine.fourier.reconstruction.FourierAccumulator.reconstruct`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from multirefine.fourier.fsc import fourier_shell_correlation
from multirefine.fourier.reconstruction import FourierAccumulator, inverse_ssnr_from_fsc
from multirefine.parallel import Executor
from multirefine.refine.batch import load_batch

__all__ = [
    "HalfMapResult",
    "accumulate",
    "accumulate_in_shards",
    "accumulate_rows_in",
    "gold_standard_reconstruction",
    "half_set_of_rows",
    "insert_rows",
    "reconstruct_from_stack",
]


def half_set_of_rows(metadata, seed: int | None = None) -> np.ndarray:
    """Half-set (1 or 2) per particle: ``rlnRandomSubset`` where present; else a random
    half each (``seed``), or alternating particles when no seed is given."""
    if "rlnRandomSubset" in metadata.columns:
        return metadata["rlnRandomSubset"].to_numpy(dtype=np.int64)
    if seed is None:
        return (np.arange(len(metadata)) % 2) + 1
    halves = np.ones(len(metadata), dtype=np.int64)
    halves[np.random.default_rng(seed).permutation(len(metadata))[: len(metadata) // 2]] = 2
    return halves


def accumulate(
    stack,
    groups: Sequence[np.ndarray],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    max_radius: float | None = None,
    progress: Callable[[int], None] | None = None,
    weights: Sequence[np.ndarray] | None = None,
    stacks: Sequence | None = None,
    targets: Sequence[int] | None = None,
) -> list[FourierAccumulator]:
    """One accumulator per group of stack rows, filled with the rows' images at their poses.

    ``weights`` (one ``(len(rows),)`` array per group) weight each particle (a posterior);
    ``stacks`` (one per group) give groups their own poses (the same images with another
    metadata table, e.g. each model's best poses). ``targets`` (one index per group): groups
    that share an index fill one accumulator (a particle's poses in one half map, ``--sep``,
    ``--hypotheses``), so memory goes with the maps made, not with the poses per particle.
    """
    targets = list(range(len(groups))) if targets is None else [int(t) for t in targets]
    accumulators = [FourierAccumulator.zeros(stack.box_size, device=device) for _ in range(max(targets, default=-1) + 1)]
    for g, rows in enumerate(groups):
        source = stack if stacks is None else stacks[g]
        insert_rows(accumulators[targets[g]], source, rows, None if weights is None else weights[g], batch_size, device,
                    max_radius, progress)
    return accumulators


def accumulate_in_shards(
    executor: Executor,
    stack,
    groups: Sequence[np.ndarray],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
    weights: Sequence[np.ndarray] | None = None,
    stacks: Sequence | None = None,
    targets: Sequence[int] | None = None,
) -> list[FourierAccumulator]:
    """:func:`accumulate` by ``executor``: the stack's rows cut into ``executor.parts``
    contiguous ranges, each range's part of every group filled by :func:`accumulate_rows_in`,
    and the ranges' accumulators added. One range (in this process) is :func:`accumulate`."""
    n = len(stack)
    edges = np.linspace(0, n, max(1, min(executor.parts, n)) + 1).round().astype(np.int64)
    bounds = list(itertools.pairwise(edges.tolist()))
    every = np.concatenate(list(groups)) if len(groups) else np.zeros(0, dtype=np.int64)
    sizes = [int(((every >= a) & (every < b)).sum()) for a, b in bounds]
    return executor.sum(accumulate_rows_in, bounds, stack, list(groups), batch_size, device, weights, stacks, targets,
                        advance=progress, sizes=sizes)


def accumulate_rows_in(
    bounds: tuple[int, int],
    stack,
    groups: Sequence[np.ndarray],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    weights: Sequence[np.ndarray] | None = None,
    stacks: Sequence | None = None,
    targets: Sequence[int] | None = None,
    advance: Callable[[int], None] | None = None,
) -> list[FourierAccumulator]:
    """:func:`accumulate` of the groups' rows within stack rows ``[bounds[0], bounds[1])``."""
    start, stop = bounds
    inside = [(rows >= start) & (rows < stop) for rows in groups]
    return accumulate(stack, [rows[i] for rows, i in zip(groups, inside)], batch_size, device, progress=advance,
                      weights=None if weights is None else [w[i] for w, i in zip(weights, inside)], stacks=stacks,
                      targets=targets)


def insert_rows(
    acc: FourierAccumulator,
    stack,
    rows: np.ndarray,
    weights: np.ndarray | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    max_radius: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Add ``rows`` of ``stack`` at their poses (each weighted by ``weights``) to ``acc``, in place."""
    for start in range(0, len(rows), batch_size):
        batch = load_batch(stack, rows[start : start + batch_size], device=device)
        w = None if weights is None else torch.as_tensor(weights[start : start + batch_size], device=device)
        acc.insert(batch.images_ft, batch.ctf, batch.rotations, max_radius, w)
        if progress is not None:
            progress(len(batch.indices))


@dataclass
class HalfMapResult:
    """A gold-standard reconstruction: the two half maps, their FSC and the full map."""

    half_maps: tuple[np.ndarray, np.ndarray]  # each (D, D, D)
    fsc: np.ndarray  # (D//2+1,) FSC between the half maps
    full_map: np.ndarray  # (D, D, D) Wiener-filtered with the SSNR the FSC implies
    inverse_ssnr: np.ndarray  # (D//2+1,) the full map's 1 / SSNR per shell (its Wiener filter)


def gold_standard_reconstruction(
    half1: FourierAccumulator,
    half2: FourierAccumulator,
    symmetry_operators: torch.Tensor | None = None,
) -> HalfMapResult:
    """Half maps from independent halves, their FSC, and the full map Wiener-filtered by it.

    The full map sums both accumulators and regularises each shell by ``1 / SSNR`` from
    the half-map FSC (:func:`inverse_ssnr_from_fsc`), as RELION's auto-refine does.
    """
    map1 = half1.reconstruct(symmetry_operators)
    map2 = half2.reconstruct(symmetry_operators)
    fsc = fourier_shell_correlation(map1, map2).cpu().numpy()
    full = half1 + half2
    inverse_ssnr = inverse_ssnr_from_fsc(fsc)
    full_map = full.reconstruct(symmetry_operators, inverse_ssnr)
    return HalfMapResult((map1.cpu().numpy(), map2.cpu().numpy()), fsc, full_map.cpu().numpy(), inverse_ssnr)


def reconstruct_from_stack(
    stack,
    rows: np.ndarray | None = None,
    symmetry_operators: np.ndarray | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> HalfMapResult:
    """Gold-standard reconstruction from ``rows`` of ``stack`` (default all) at their poses.

    Half-sets come from ``rlnRandomSubset`` where present, else alternate particles.
    """
    rows = np.arange(len(stack)) if rows is None else np.asarray(rows)
    halves = half_set_of_rows(stack.metadata)[rows]
    acc1, acc2 = accumulate(stack, [rows[halves == 1], rows[halves == 2]], batch_size, device, progress=progress)
    ops = None if symmetry_operators is None else torch.as_tensor(symmetry_operators)
    return gold_standard_reconstruction(acc1, acc2, ops)
