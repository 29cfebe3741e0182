"""CPU mode's Ray: its own cluster whatever `ray start` left on the machine, or the one at
RAY_ADDRESS with CPU mode's environment on every worker (`openrlhf_meds.cpu.launch.init_ray`).

Real `ray start` clusters with their own temp dir (RAY_TMPDIR), stopped by process id. Each
case runs in a fresh interpreter, as `train_grpo --cpu` would (about 40 s in all on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import psutil
import pytest

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


@pytest.fixture
def ray_tmp():
    # Short: Ray's unix socket paths live under it (108 characters at most).
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    # Whatever `ray start` left running under this temp dir, by process id.
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(path in part for part in proc.info["cmdline"] or []):
            proc.kill()


def ray_start(ray_tmp: str, num_gpus: int) -> str:
    """`ray start --head` with its own temp dir and ports; returns its GCS address."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    port = _free_port()
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray, "start", "--head", f"--port={port}", "--num-cpus=2", f"--num-gpus={num_gpus}"]
    cmd += [f"--temp-dir={ray_tmp}", "--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    return f"127.0.0.1:{port}"


def port(address: str) -> str:  # the node's IP may be any of the machine's
    return address.rsplit(":", 1)[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
