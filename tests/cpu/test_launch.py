"""CPU mode's Ray: its own cluster whatever `ray start` left on the machine, or the one at
RAY_ADDRESS with CPU mode's environment on every worker (`openrlhf_meds.cpu.launch.init_ray`).

Real `ray start` clusters with their own temp dir (RAY_TMPDIR), stopped by process id. Each
case runs in a fresh interpreter, as `train_grpo --cpu` would (about 40 s in all on 2 cores,
about 2 minutes for the `ray job submit` run). Also the check that every engine node has
openrlhf_meds, on a cluster with a node lacking it (about 40 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import pytest

from openrlhf_meds import __version__
from openrlhf_meds.cpu.launch import free_port

pytestmark = pytest.mark.slow

PROBE = """
import json, os, ray
from openrlhf_meds.cpu.launch import cpu_mode, init_ray

with cpu_mode():
    try:
        init_ray(num_cpus=2, num_gpus=3)
    except SystemExit as e:
        print(json.dumps({"exit": str(e)}))
        raise SystemExit(0)
    @ray.remote(num_cpus=0)
    def worker():
        import sys
        return os.environ.get("OPENRLHF_MEDS_CPU"), "openrlhf_meds.cpu.patches" in sys.modules
    env, patched = ray.get(worker.remote())
    print(json.dumps({"gpus": ray.cluster_resources().get("GPU", 0), "address": ray.get_runtime_context().gcs_address,
                      "worker_cpu_env": env, "worker_patched": patched}))
    ray.shutdown()
"""


def probe(ray_tmp: str, address: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OPENRLHF_MEDS_CPU")}
    env["RAY_TMPDIR"] = ray_tmp
    if address:
        env["RAY_ADDRESS"] = address
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def ray_start(ray_tmp: str, num_gpus: int, num_cpus: int = 2, dashboard_port: int | None = None) -> str:
    """`ray start --head` with its own temp dir and ports (and the job server on
    `dashboard_port` if given); returns its GCS address."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    port = free_port()
    cmd = [RAY, "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}"]
    cmd += [f"--temp-dir={ray_tmp}", "--disable-usage-stats"]
    if dashboard_port:
        cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    else:
        cmd += ["--include-dashboard=false"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    return f"127.0.0.1:{port}"


def ray_join(
    ray_tmp: str, address: str, num_cpus: int, num_gpus: int = 0, name: str = "n2", python: str | None = None
) -> None:
    """Another node on this machine (`ray start --address`, its own temp dir `name` under
    `ray_tmp`, so the fixture's clean-up finds it); `python`: the interpreter its Ray workers
    run (another environment; default this one)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    node_tmp = os.path.join(ray_tmp, name)
    os.makedirs(node_tmp, exist_ok=True)
    cmd = [python, "-m", "ray.scripts.scripts"] if python else [RAY]  # the raylet's workers run this Python
    cmd += ["start", f"--address={address}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}"]
    cmd += [f"--temp-dir={node_tmp}", "--disable-usage-stats"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)


def env_without_openrlhf_meds(path: str) -> str:
    """A Python environment at `path` with every package of this one but openrlhf_meds (what a
    node lacking the package has): a venv whose site-packages links to each entry of ours but
    openrlhf_meds' editable finder, its .pth and its dist-info. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True, timeout=60)
    ours = sysconfig.get_paths()["purelib"]
    theirs = sysconfig.get_paths(vars={"base": path, "platbase": path})["purelib"]
    for name in os.listdir(ours):
        if "openrlhf_meds" not in name:
            os.symlink(os.path.join(ours, name), os.path.join(theirs, name))
    return os.path.join(path, "bin", "python")


def port(address: str) -> str:  # the node's IP may be any of the machine's
    return address.rsplit(":", 1)[1]


def test_stale_cluster_file_is_ignored(ray_tmp):
    # What a stopped `ray start` leaves: the address file of a cluster that no longer exists.
    with open(os.path.join(ray_tmp, "ray_current_cluster"), "w") as f:
        f.write("127.0.0.1:1")
    seen = probe(ray_tmp)
    assert seen["gpus"] == 3  # a cluster of its own, with CPU mode's logical GPUs
    assert seen["worker_cpu_env"] == "1" and seen["worker_patched"]


def test_live_cluster_without_ray_address_is_left_alone(ray_tmp):
    address = ray_start(ray_tmp, num_gpus=0)
    seen = probe(ray_tmp)
    assert seen["gpus"] == 3 and port(seen["address"]) != port(address)


def test_joins_the_cluster_at_ray_address(ray_tmp):
    address = ray_start(ray_tmp, num_gpus=2)
    seen = probe(ray_tmp, address)
    assert port(seen["address"]) == port(address) and seen["gpus"] == 2  # the cluster's, not CPU mode's own 3
    # The raylet of `ray start` did not inherit the driver's environment: the job's runtime env did it.
    assert seen["worker_cpu_env"] == "1" and seen["worker_patched"]


def test_cluster_without_gpus_is_a_clear_error(ray_tmp):
    address = ray_start(ray_tmp, num_gpus=0)
    seen = probe(ray_tmp, address)
    assert "has no GPUs" in seen["exit"] and "--num-gpus" in seen["exit"] and address in seen["exit"]


def test_ray_job_submit_runs_train_grpo_cpu_with_meds_on_two_nodes(ray_tmp, meds_job, tmp_path):
    """The headline command on CPU: `ray job submit --runtime-env ray_configs/runtime_env_cpu.yaml
    -- python -m openrlhf_meds.train_grpo --cpu ...` against a two-node `ray start` cluster (a
    head with the logical GPUs, a second node with CPUs only), 2 MEDS steps with 2 memory shards
    spread over both nodes (about 2 minutes)."""
    dashboard = free_port()
    head = ray_start(ray_tmp, num_gpus=8, num_cpus=16, dashboard_port=dashboard)
    ray_join(ray_tmp, head, num_cpus=2)
    out = str(tmp_path / "grpo")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OPENRLHF_MEDS_CPU")}
    env["RAY_TMPDIR"] = ray_tmp
    job_server = f"http://127.0.0.1:{dashboard}"
    cmd = [RAY, "job", "submit", "--address", job_server, "--runtime-env", meds_job.runtime_env, "--"]
    cmd += [sys.executable, "-m", "openrlhf_meds.train_grpo", "--cpu", *meds_job.argv(out, str(tmp_path / "meds"))]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in log, log[-5000:]
    meds_job.check(out, log)


NODES_CHECK = """
import json, sys, ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from openrlhf_meds.integration.nodes import check_engine_nodes, engine_nodes

ray.init(address=sys.argv[1])
alive = [n for n in ray.nodes() if n["Alive"]]
bad = [n["NodeID"] for n in alive if "/no_meds/" in n["RayletSocketName"]]
good = [n["NodeID"] for n in alive if n["NodeID"] not in bad]
check_engine_nodes(good)  # the healthy nodes pass
# Engines as OpenRLHF places them: bundles of one placement group, here one per node.
pg = placement_group([{"GPU": 1, "CPU": 1}] * len(alive), strategy="STRICT_SPREAD")
ray.get(pg.ready(), timeout=60)
hosts = engine_nodes(PlacementGroupSchedulingStrategy(pg))
try:
    check_engine_nodes(hosts)
    error = None
except RuntimeError as e:
    error = str(e)
print(json.dumps({"good": good, "bad": bad, "hosts": hosts, "ip": alive[0]["NodeManagerAddress"], "error": error}))
"""


def test_engine_nodes_without_openrlhf_meds_are_named(ray_tmp, tmp_path):
    """The check before MEDS's rollout engines are created, on a `ray start` cluster of three
    nodes with a logical GPU each: the head and a second node in this environment, a third
    whose Ray workers run a Python without openrlhf_meds. The two healthy nodes pass; the
    nodes of a placement group over all three fail, naming the third (about 30 s)."""
    head = ray_start(ray_tmp, num_gpus=1, num_cpus=1)
    ray_join(ray_tmp, head, num_cpus=1, num_gpus=1)
    python = env_without_openrlhf_meds(str(tmp_path / "venv"))
    ray_join(ray_tmp, head, num_cpus=1, num_gpus=1, name="no_meds", python=python)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OPENRLHF_MEDS_CPU")}
    env["RAY_TMPDIR"] = ray_tmp
    # Not from the repository: Ray puts the driver's working directory on its workers' sys.path.
    out = subprocess.run(
        [sys.executable, "-c", NODES_CHECK, head], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(seen["good"]) == 2 and len(seen["bad"]) == 1
    assert sorted(seen["hosts"]) == sorted(seen["good"] + seen["bad"])
    error = seen["error"]
    assert error and "not ready on 1 of these 3 nodes" in error, error
    line = next(line for line in error.splitlines() if seen["bad"][0][:8] in line)
    assert f"({seen['ip']})" in line and "openrlhf_meds does not import" in line, line
    assert "no `openrlhf_meds` entry point in vllm.general_plugins" in line, line
    assert f"{python} -m pip install -e" in line and f"pip install openrlhf_meds=={__version__}" in line, line
    assert not any(node[:8] in error for node in seen["good"])
    assert "MEDS: openrlhf_meds and its vLLM plugin ready on the engine nodes: " in out.stdout
