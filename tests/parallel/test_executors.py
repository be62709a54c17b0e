"""Executors: ``--parallel`` parsed, shards of accumulators add up to the whole, and a run on
a Dask cluster (two local worker processes) gives the run made in this process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import ADK_BOX as BOX
from helpers import simulate_adk

from multirefine.errors import InputError
from multirefine.parallel import InProcess, parse_parallel


@pytest.mark.parametrize("spec, expected", [("thread:1", ("thread", "1")), ("thread:16", ("thread", "16")),
                                            ("dask:tcp://10.0.0.2:8786", ("dask", "tcp://10.0.0.2:8786")),
                                            ("dask:/shared/scheduler.json", ("dask", "/shared/scheduler.json"))])
def test_parallel_specs(spec, expected):
    assert parse_parallel(spec) == expected


@pytest.mark.parametrize("spec", ["thread:", "thread:0", "thread:two", "thread:\u00b2", "dask:", "mpi:4", "4"])
def test_bad_parallel_specs_name_the_option(spec):
    with pytest.raises(InputError, match=f"--parallel {spec}: expected"):
        parse_parallel(spec)


def test_a_scheduler_file_that_never_appears_is_one_error(tmp_path, monkeypatch):
    """distributed itself waits for a scheduler file forever; the run waits CONNECT_TIMEOUT_S."""
    pytest.importorskip("distributed")
    from multirefine.parallel import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 0.5)
    with pytest.raises(InputError, match="no scheduler file there after 0.5 s"):
        cluster.DaskCluster(str(tmp_path / "scheduler.json"))
    for text in ("", "not json", "[1, 2]", '{"type": "Scheduler"}'):  # being written, or not one
        (tmp_path / "scheduler.json").write_text(text)
        with pytest.raises(InputError, match=r"not a scheduler file \(JSON with an address\) after 0.5 s"):
            cluster.DaskCluster(str(tmp_path / "scheduler.json"))


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    """600 particles of adk open and closed, SNR 0.1, CTF; the true maps low-passed to 20 Å."""
    root = tmp_path_factory.mktemp("two_states")
    simulate_adk(root / "sim", 600, [0.5, 0.5], seed=1, lowpass_angstrom=20.0)
    return root


class _Cut(InProcess):
    """In this process, but cut into shards as a cluster of ``parts`` threads would be."""

    def __init__(self, parts: int) -> None:
        self.parts = parts


def test_shards_of_a_reconstruction_add_up_to_the_whole(two_states):
    """Accumulators are sums: the reconstruction cut into shards of stack rows (as on a
    cluster) gives the maps made in one pass, to float rounding."""
    from multirefine.io.particles import open_particles
    from multirefine.refine.choice import fold_shards
    from multirefine.refine.layers import Layer, reconstruct_models
    from multirefine.refine.reconstruct import half_set_of_rows
    from multirefine.refine.solvent import ModelMasks

    truth = open_particles(two_states / "sim" / "truth.star")
    n = len(truth)
    model = truth.metadata["rlnClassNumber"].to_numpy() - 1
    halves = half_set_of_rows(truth.metadata, 0)
    layers = [Layer(model, np.zeros((n, 3, 3)), np.zeros((n, 2)), np.zeros(n), np.ones(n))]
    stacks = [truth]  # the true poses are in this table already
    maps = [np.zeros((BOX,) * 3, np.float32)] * 2
    operators, mask = [torch.eye(3)[None]] * 2, ModelMasks(BOX, 15)
    made = [reconstruct_models(truth, layers, stacks, halves, maps, operators, mask, 1.0, "cpu", None, "", executor)
            for executor in (InProcess(), _Cut(5))]
    assert len(fold_shards(n, 5, 500)) == 12 and len(fold_shards(n, 1, 500)) == 1
    shards = fold_shards(6000, 64, 100)  # 12 folds of 500, each cut into 5 pieces of a batch or more
    assert len(shards) == 60 and min(map(len, shards)) >= 100
    assert np.array_equal(np.concatenate(shards), np.arange(6000))
    for whole, cut in zip(made[0].maps, made[1].maps):
        assert np.abs(whole - cut).max() < 1e-5 * np.abs(whole).max()
        assert np.abs(whole).max() > 0
    assert made[0].particles_in_maps == made[1].particles_in_maps


def _run(root, run, *extra):
    from multirefine.cli.main import main

    return main(["refine", "--input", str(root / "sim" / "particles.star"), "--models",
                 f"{root / 'lp_1.mrc'},{root / 'lp_2.mrc'}", "--iter", "2", "--path", str(run), *extra])


@pytest.mark.slow
def test_a_run_on_a_dask_cluster_is_the_run_made_here(two_states, dask_scheduler, tmp_path, capsys):
    """Two iterations and one of each model on its own, with the searches and reconstructions
    as tasks on two worker processes: the same models, poses and maps as in this process (to
    float rounding)."""
    from multirefine.io.maps import read_map
    from multirefine.io.star import read_particles_star

    assert _run(two_states, tmp_path / "here", "--parallel", "thread:1", "--singleiter", "1") == 0
    assert _run(two_states, tmp_path / "dask", "--parallel", f"dask:{dask_scheduler}", "--singleiter", "1") == 0
    assert "particle loops: Dask scheduler" in capsys.readouterr().out
    # The accumulators are added in another order, so the maps differ in the last bits and a
    # particle at a near tie may take another pose (3 of 6000 after two iterations of the
    # conformational benchmark): allow 1 % of the particles that.
    for table in ("particles_02.star", "model_01/particles_final.star", "model_02/particles_final.star"):
        here, there = (read_particles_star(tmp_path / run / table).metadata for run in ("here", "dask"))
        assert np.mean(here["rlnClassNumber"].to_numpy() == there["rlnClassNumber"].to_numpy()) >= 0.99
        for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
            d = np.abs(here[column].to_numpy() - there[column].to_numpy())
            d = np.minimum(d, 360 - d) if column.startswith("rlnAngle") else d  # -180 and 180 are one angle
            assert np.mean(d < 1e-3) >= 0.99, (table, column)
    for name in ("threed_02_01.mrc", "threed_02_02.mrc", "model_01/threed_final.mrc", "model_02/threed_final.mrc"):
        a, b = (read_map(tmp_path / run / name)[0] for run in ("here", "dask"))
        assert np.abs(a - b).max() < 2e-3 * np.abs(a).max(), name
    converged = json.loads((tmp_path / "dask" / "convergence.json").read_text())
    assert converged[-1]["particles_per_model"] == json.loads(
        (tmp_path / "here" / "convergence.json").read_text())[-1]["particles_per_model"]


def test_check_reports_the_cluster(two_states, dask_scheduler, tmp_path, capsys):
    assert _run(two_states, tmp_path / "run", "--parallel", f"dask:{dask_scheduler}", "--nosingle", "--check") == 0
    assert "2 workers, 2 threads" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_no_scheduler_is_a_one_line_error(two_states, tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (multirefine[dask])")
    from multirefine.parallel import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    assert _run(two_states, tmp_path / "run", "--parallel", "dask:tcp://127.0.0.1:9") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("multirefine refine: error: --parallel dask:tcp://127.0.0.1:9: no Dask scheduler answered")
    assert "\n" not in err and not (tmp_path / "run").exists()


def test_an_address_that_is_neither_is_a_one_line_error(two_states, tmp_path, capsys):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (multirefine[dask])")
    assert _run(two_states, tmp_path / "run", "--parallel", f"dask:{tmp_path / 'scheduler'}") == 2
    assert "neither a scheduler's address (tcp://host:8786) nor a scheduler file" in capsys.readouterr().err


def test_dask_workers_compute_on_the_cpu(two_states, tmp_path, capsys):
    assert _run(two_states, tmp_path / "run", "--parallel", "dask:tcp://127.0.0.1:9", "--device", "cuda") == 2
    assert "Dask workers compute on the CPU" in capsys.readouterr().err


def test_a_cluster_failing_under_the_run_is_one_line_with_status_3(dask_scheduler, two_states, tmp_path, capsys,
                                                                    monkeypatch):
    from types import SimpleNamespace

    from distributed import KilledWorker

    import multirefine.parallel
    from multirefine.errors import ClusterError
    from multirefine.parallel import DaskCluster

    cluster = DaskCluster(dask_scheduler)
    try:
        with pytest.raises(ClusterError, match=r"the cluster failed under the run \(KilledWorker"), cluster._failures():
            raise KilledWorker("search", SimpleNamespace(address="tcp://10.0.0.9:40000"), 3)
    finally:
        cluster.close()

    def failing(spec):
        raise ClusterError(f"--parallel {spec}: the cluster failed under the run (KilledWorker: search)")

    monkeypatch.setattr(multirefine.parallel, "executor_for", failing)
    assert _run(two_states, tmp_path / "run", "--parallel", "dask:tcp://10.0.0.9:8786") == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("multirefine refine: error: --parallel dask:") and "\n" not in err


def _slow_shard(shard, shared):
    import time

    time.sleep(30)
    return shard + len(shared)


def test_losing_every_worker_under_a_stage_is_a_cluster_error():
    """Every worker killed while the shards run: the data scattered to them is gone and
    cannot be made again, so the stage fails as one ClusterError (status 3), not a wait."""
    import os
    import signal
    import sys
    import threading
    import time

    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (multirefine[dask])")
    import cloudpickle

    from multirefine.errors import ClusterError
    from multirefine.parallel import DaskCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as local:
        cluster = DaskCluster(local.scheduler_address)
        pids = list(cluster.client.run(os.getpid).values())

        def kill_workers():
            time.sleep(3)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

        raised = []

        def run_stage():
            try:
                cluster.map(_slow_shard, [1, 2], list(range(100)))
            except Exception as exc:  # noqa: BLE001 - checked below
                raised.append(exc)

        killer, stage = threading.Thread(target=kill_workers), threading.Thread(target=run_stage, daemon=True)
        killer.start()
        stage.start()
        try:
            stage.join(timeout=25)  # the shards take 30 s: an error before then is not a wait
            assert not stage.is_alive(), "the stage still waits for its workers"
        finally:
            killer.join()
            cluster.close()
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        assert len(raised) == 1 and isinstance(raised[0], ClusterError), raised
        assert "failed under the run" in str(raised[0]) and "--continue" in str(raised[0])
