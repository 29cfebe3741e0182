"""CPU mode's Ray: its own cluster whatever `ray start` left on the machine, or the one at
RAY_ADDRESS with CPU mode's environment on every worker (`openrlhf_meds.cpu.launch.init_ray`).

Real `ray start` clusters with their own temp dir (RAY_TMPDIR), stopped by process id. Each
case runs in a fresh interpreter, as `train_grpo --cpu` would (about 40 s in all on 2 cores, and
about 2 minutes for the `ray job submit` run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


def ray_join(ray_tmp: str, address: str, num_cpus: int) -> None:
    """A second node on this machine (`ray start --address`, its own temp dir under
    `ray_tmp`, so the fixture's clean-up finds it): CPUs only."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    node_tmp = os.path.join(ray_tmp, "n2")
    os.makedirs(node_tmp, exist_ok=True)
    cmd = [RAY, "start", f"--address={address}", f"--num-cpus={num_cpus}", "--num-gpus=0"]
    cmd += [f"--temp-dir={node_tmp}", "--disable-usage-stats"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)


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
