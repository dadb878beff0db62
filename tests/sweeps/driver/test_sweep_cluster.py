"""Multi-node on one machine: a Ray head and two worker nodes with GPU resources declared."""

from __future__ import annotations

import sys
import threading
from collections import defaultdict

import pytest

from sweeps.common import Outcome, keys
from sweeps.driver import RunOptions, TrialEnded, run_sweep
from sweeps.spec import parse_spec
from tests.sweep_helpers import FIXTURE_MODULE, load, small_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=4, num_gpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, nodes
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    sys.modules.pop("faulty_wl", None)


def _spec(n_trials: int, delay: float, record: str):
    spec = small_spec(n_trials=n_trials, workload={
        "name": "faulty_wl:make", "args": {"delay": delay, "record": record}})
    spec["space"]["lr"]["high"] = 0.01  # stable trials, so each runs all its steps
    return parse_spec(spec)


def test_trials_get_distinct_gpus_and_their_cpu_count(cluster, tmp_path):
    address = cluster[0].address
    options = RunOptions(ray_address=address, workers=4, cpus_per_trial=2, gpus_per_trial=1,
                         tracking=False, workdir=tmp_path)
    summary = run_sweep(_spec(8, 0.02, str(tmp_path)), options)
    assert summary.n_trials == 8
    study = load(tmp_path, "t")
    by_node: dict[str, dict[int, tuple[str, ...]]] = defaultdict(dict)
    for t in study.trials:
        worker = t.user_attrs[keys.WORKER]
        assert worker["torch_threads"] == 2  # the CPUs Ray granted
        assert len(worker["gpu_ids"]) == 1
        by_node[worker["node_id"]][worker["pid"]] = tuple(worker["gpu_ids"])
    assert len(by_node) == 2, "trials should spread over both worker nodes"
    for actors in by_node.values():
        gpu_sets = list(actors.values())
        assert len(gpu_sets) == len(set(gpu_sets)), f"two actors share a GPU: {actors}"
    # the workload saw the same thing from inside the trial
    records = [p.read_text() for p in tmp_path.iterdir() if p.name[0].isdigit()]
    assert records and all(r.split(";")[1] == "2" for r in records)


def test_fractional_gpus_share_a_device(cluster, tmp_path):
    options = RunOptions(ray_address=cluster[0].address, workers=4, cpus_per_trial=1,
                         gpus_per_trial=0.5, tracking=False, workdir=tmp_path)
    summary = run_sweep(_spec(4, 0.0, ""), options)
    assert summary.n_trials == 4
    for t in load(tmp_path, "t").trials:
        assert len(t.user_attrs[keys.WORKER]["gpu_ids"]) == 1


def test_node_lost_mid_sweep_is_retried_and_study_finishes(cluster, tmp_path):
    cl, nodes = cluster
    options = RunOptions(ray_address=cl.address, workers=4, cpus_per_trial=2, gpus_per_trial=1,
                         tracking=False, workdir=tmp_path, max_retries=3)

    completed: list[int] = []
    removers: list[threading.Thread] = []

    def on_event(event: object) -> None:
        if isinstance(event, TrialEnded) and event.outcome is Outcome.COMPLETE:
            completed.append(event.trial)
            if len(completed) == 2:  # trials are running on both nodes now: drop one
                removers.append(threading.Thread(target=cl.remove_node, args=(nodes[1],)))
                removers[0].start()

    summary = run_sweep(_spec(10, 0.05, ""), options, on_event=on_event)
    for remover in removers:
        remover.join(timeout=30)
    assert removers, "the sweep finished before a node could be removed"
    assert summary.n_trials == 10
    study = load(tmp_path, "t")
    lost = [t for t in study.trials if t.user_attrs.get(keys.OUTCOME) == Outcome.WORKER_LOST]
    assert lost, "removing a node with running trials must lose them"
    for t in lost:
        assert t.state.name == "FAIL"
        retried = [r for r in study.trials if r.user_attrs.get(keys.RETRY_OF) == t.number]
        assert len(retried) == 1 and retried[0].params == t.params
    assert all(t.state.name != "RUNNING" for t in study.trials)
