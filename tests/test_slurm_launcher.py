"""`sbatch examples/scripts/slurm_multinode.sbatch` on a real local Slurm cluster: Debian's
slurm-wlm and munge (installed with apt as root if missing: about 10 s with a warm apt cache,
a minute without), one munged, one slurmctld and two slurmd on this host (`slurmd -N`, each
with its own port), each node declaring 8 GPUs as Slurm GRES backed by stand-in device files
(the CPU run's logical GPUs, as `ray start --num-gpus` gives them). The launcher starts Ray on
both nodes with srun and runs a tiny CPU recipe: 2 MEDS steps of `train_grpo --cpu` through
`ray job submit` (about 2 minutes). Everything is stopped by process id.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

import pytest

from openrlhf_meds.cpu.launch import free_port

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "examples", "scripts", "slurm_multinode.sbatch")
NODES = ("n1", "n2")


def _have_slurm() -> str | None:
    """None when slurm-wlm and munge are usable (installing them if needed), else why not."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed, and installing them needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.run(
        ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"], env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        return f"apt-get install slurm-wlm munge failed: {out.stderr[-500:]}"
    return None


def _conf(root: str, ports: dict[str, int], host: str) -> str:
    lines = [
        "ClusterName=medstest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ports['ctld']}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge/sock",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/run/slurmctld.pid",
        f"SlurmdPidFile={root}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides",  # the declared node, not the probed hardware
        "ReturnToService=2",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "GresTypes=gpu",
    ]
    cpus = os.cpu_count() or 2
    for node in NODES:
        lines.append(
            f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[node]} CPUs={cpus} "
            "RealMemory=4000 Gres=gpu:8"
        )
    lines.append(f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


@pytest.fixture
def slurm_cluster(ray_tmp):
    """A two-node Slurm cluster of the test's own under `ray_tmp` (whose teardown kills the
    daemons and what the job left, by process id): (SLURM_CONF path, root folder)."""
    why = _have_slurm()
    if why:
        pytest.skip(why)
    root = ray_tmp
    for sub in ("state", "run", "log", "munge", "dev", "ray", *(f"spool/{n}" for n in NODES)):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    # munge: a key and a socket of our own, run as the munge user (munged refuses root).
    munge = pwd.getpwnam("munge")
    key = os.path.join(root, "munge", "key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o600)
    for path in (os.path.join(root, "munge"), key):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    os.chmod(root, 0o755)
    m = f"{root}/munge"
    subprocess.run(
        ["runuser", "-u", "munge", "--", "munged", f"--socket={m}/sock", f"--key-file={key}", f"--pid-file={m}/pid"]
        + [f"--log-file={m}/log", f"--seed-file={m}/seed"],
        check=True,
        timeout=30,
    )
    # 8 GRES GPUs per node need 8 device files; character devices like /dev/null stand in.
    for i in range(8):
        os.mknod(os.path.join(root, "dev", f"gpu{i}"), 0o600 | 0o020000, os.makedev(1, 3))
    with open(os.path.join(root, "gres.conf"), "w") as f:
        f.write(f"Name=gpu File={root}/dev/gpu[0-7]\n")
    conf = os.path.join(root, "slurm.conf")
    ports = {"ctld": free_port(), **{n: free_port() for n in NODES}}
    with open(conf, "w") as f:
        f.write(_conf(root, ports, socket.gethostname().split(".")[0]))
    env = {**os.environ, "SLURM_CONF": conf}
    subprocess.run(["slurmctld", "-f", conf, "-i"], env=env, check=True, timeout=30)
    for node in NODES:
        subprocess.run(["slurmd", "-f", conf, "-N", node], env=env, check=True, timeout=30)
    deadline = time.monotonic() + 60
    while True:
        states = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True, timeout=30
        ).stdout.split()
        if states.count("idle") == len(NODES):
            break
        assert time.monotonic() < deadline, f"Slurm nodes not idle after 60 s: {states}\n{_logs(root)}"
        time.sleep(1)
    return conf, root


def _logs(root: str) -> str:
    out = []
    for name in sorted(os.listdir(os.path.join(root, "log"))):
        with open(os.path.join(root, "log", name)) as f:
            out.append(f"== {name}\n" + "".join(f.readlines()[-15:]))
    return "\n".join(out)


def test_sbatch_multinode_launcher_runs_meds_on_cpu(slurm_cluster, meds_job, tmp_path):
    conf, root = slurm_cluster
    out = str(tmp_path / "grpo")
    recipe = tmp_path / "tiny_cpu_recipe.sh"
    job = [sys.executable, "-m", "openrlhf_meds.train_grpo", "--cpu", *meds_job.argv(out, str(tmp_path / "meds"))]
    # The launcher's contract with a recipe: RAY_ADDRESS (the head's job server) and NUM_NODES.
    recipe.write_text(
        "set -euo pipefail\n"
        'echo "recipe on $NUM_NODES nodes"\n'
        f'ray job submit --address "$RAY_ADDRESS" --runtime-env {meds_job.runtime_env} -- {" ".join(job)}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_")) and k != "OPENRLHF_MEDS_CPU"}
    env.update(
        SLURM_CONF=conf,
        PATH=os.path.dirname(sys.executable) + os.pathsep + env["PATH"],
        RECIPE=str(recipe),
        RAY_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()),
        RAY_TEMP_DIR=os.path.join(root, "ray"),  # two Ray nodes on one host need a temp dir each
        RAY_START_ARGS="--num-cpus=16 --disable-usage-stats",  # CPU mode's logical CPUs
        READY_TIMEOUT="120",
    )
    log = tmp_path / "slurm.out"
    # The command line overrides the launcher's #SBATCH lines that this host cannot meet.
    cmd = ["sbatch", "--wait", f"--cpus-per-task={os.cpu_count() or 2}", f"--output={log}", f"--chdir={REPO}"]
    try:
        result = subprocess.run([*cmd, LAUNCHER], env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--full", "--name=meds"], env=env, timeout=30)
        raise
    text = log.read_text() if log.exists() else ""
    assert result.returncode == 0, f"{result.stderr}\n{text[-6000:]}\n{_logs(root)}"
    assert "Ray head: n1 (127.0.0.1), 2 nodes, 8 GPUs each" in text and "recipe on 2 nodes" in text
    assert "succeeded" in text, text[-6000:]
    meds_job.check(out, text)
