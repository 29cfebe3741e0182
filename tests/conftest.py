"""Shared fixtures: Qwen's real tokenizer and tiny random Qwen2 models, saved and reloaded
once per test session (building the tokenizer from 151k BPE ranks takes seconds)."""

import os

import pytest
import torch

# Nothing may be downloaded: fail fast instead of waiting on the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The test models are tiny: one thread is faster than two, and on a busy 2-core machine
# OpenMP's thread hand-offs made each small matmul ~30x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def local_ray():
    """`local_ray(num_cpus, num_gpus, object_store_mb, **ray_init_kwargs)` starts an in-process
    Ray cluster of the test's own: `address="local"`, never a `ray start` cluster of the machine."""
    import ray

    def start(num_cpus: int = 2, num_gpus: int = 0, object_store_mb: int = 80, **kwargs):
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            object_store_memory=object_store_mb * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
            **kwargs,
        )

    return start


@pytest.fixture
def ray_tmp():
    """A short temp dir (Ray's unix socket paths live under it: 108 characters at most) for
    the processes a test starts (`ray start`, Slurm daemons). At teardown every process whose
    command line names it is killed by process id, with its children (Ray workers rename
    themselves "ray::...", so they are found through their raylet)."""
    import tempfile

    import psutil

    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    ours = [p for p in psutil.process_iter(["pid", "cmdline"]) if any(path in a for a in p.info["cmdline"] or [])]
    for proc in [c for p in ours for c in _children(p)] + ours:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    return build_qwen_tokenizer()


def _saved_tiny_qwen2(tmp_path_factory, tie_word_embeddings):
    from transformers import AutoModelForCausalLM

    from openrlhf_meds.demo.toy import build_qwen_tokenizer, make_tiny_qwen2

    path = str(tmp_path_factory.mktemp("tiny_qwen2_tied" if tie_word_embeddings else "tiny_qwen2"))
    model = make_tiny_qwen2(tie_word_embeddings=tie_word_embeddings)
    # RMSNorm weights start at 1; random ones make a missing or doubled norm visible.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    build_qwen_tokenizer(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """16-layer random Qwen2 (hidden 128, Qwen's 151,936-row vocabulary, random norm weights),
    untied lm_head, saved with Qwen's tokenizer and reloaded."""
    return _saved_tiny_qwen2(tmp_path_factory, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_qwen2_tied(tmp_path_factory):
    """As tiny_qwen2, with the lm_head tied to the input embeddings."""
    return _saved_tiny_qwen2(tmp_path_factory, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """The directory of a 2-layer random BERT (hidden 32) with Qwen's tokenizer: a local
    encoder for `--meds.features semantic`."""
    from transformers import BertConfig, BertModel

    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    path = str(tmp_path_factory.mktemp("tiny_encoder"))
    tokenizer = build_qwen_tokenizer(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        BertModel(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    """The demo's tiny Qwen2 taught the \\boxed{} format with OpenRLHF's SFT trainer (CPU),
    with the arithmetic task's prompts and reward file: {"sft_model", "prompts", "reward", ...}.
    Built once per session (minutes); OPENRLHF_MEDS_TEST_SFT=DIR reuses a finished one."""
    import json

    from openrlhf_meds.demo.sft import sft_tiny_model

    cached = os.environ.get("OPENRLHF_MEDS_TEST_SFT")
    if cached:
        return json.load(open(os.path.join(cached, "sft_done.json")))
    # The demo's 200 SFT steps: the model the demo's premise line describes (test_sft.py).
    return sft_tiny_model(str(tmp_path_factory.mktemp("sft")))


@pytest.fixture
def meds_job(sft_model):
    """A 2-step MEDS run of the SFT model for a two-node cluster of the test's (`ray job submit`, Slurm):
    `argv(out, memory_dir)`, the flags after `train_grpo --cpu` (2 memory shards spread over the
    nodes, a checkpoint at step 2, tensorboard in `out`/tb); `check(out, log)`, what the finished
    run must show; `runtime_env`, ray_configs/runtime_env_cpu.yaml."""
    import re
    from types import SimpleNamespace

    from openrlhf_meds.cpu.launch import PPO_CPU_FLAGS
    from openrlhf_meds.demo.main import read_scalars
    from openrlhf_meds.demo.sft import grpo_argv
    from openrlhf_meds.memory.wal import read_manifest

    def argv(out: str, memory_dir: str) -> list[str]:
        flags = grpo_argv(
            sft_model["sft_model"], sft_model["prompts"], sft_model["reward"], out, steps=2, prompts_per_step=4
        )[: -len(PPO_CPU_FLAGS)]
        flags += ["--logger.tensorboard_dir", os.path.join(out, "tb"), "--logger.logging_steps", "1"]
        flags += ["--ckpt.save_steps", "2", "--meds.memory_shards", "2", "--meds.memory_placement", "spread"]
        return flags + ["--meds.memory_dir", memory_dir]

    def check(out: str, log: str) -> None:
        # the shards on two nodes (the driver's first), the per-step MEDS lines, growing
        # meds/memory_vectors, the memory's checkpoint with both shards
        placed = re.search(r"MEDS memory \(spread placement\): shard 0 on node (\w+) .*, shard 1 on node (\w+) ", log)
        assert placed and placed.group(1) != placed.group(2), log[-5000:]
        assert "MEDS step 1: " in log and "MEDS step 2: " in log, log[-5000:]
        scalars = {tag: dict(points) for tag, points in read_scalars(os.path.join(out, "tb")).items()}
        assert sorted(scalars["train/meds/memory_vectors"]) == [1, 2]
        assert scalars["train/meds/memory_vectors"][2] > scalars["train/meds/memory_vectors"][1] > 0
        manifest, files = read_manifest(os.path.join(out, "ckpt", "meds_memory", "global_step2"))
        assert manifest["num_shards"] == 2 and manifest["step"] == 2 and len(files) == 2
        assert manifest["vectors"] == scalars["train/meds/memory_vectors"][2]

    runtime_env = os.path.join(os.path.dirname(__file__), "..", "ray_configs", "runtime_env_cpu.yaml")
    return SimpleNamespace(argv=argv, check=check, runtime_env=os.path.abspath(runtime_env))
