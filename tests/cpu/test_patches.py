"""Contract tests for openrlhf_meds.cpu.patches: each fails loudly when an upstream internal
we patch changes (read from the installed sources, without importing the heavy packages),
plus real checks of the pieces we add (flash-attn helpers, the gloo weight-sync group) and
of the start-up path that installs the patches in a fresh process."""

import importlib.util
import os
import subprocess
import sys
import threading

import pytest
import torch

from openrlhf_meds.cpu import launch, patches


def _source(package: str, relpath: str) -> str:
    """Text of an installed package's file, found without importing the package."""
    root = os.path.dirname(importlib.util.find_spec(package).origin)
    with open(os.path.join(root, relpath)) as f:
        return f.read()


def test_every_patch_has_a_readme_row():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "patches", "README.md")).read()
    names = [fn.__name__ for fns in patches._PATCHES.values() for fn in fns]
    assert len(names) == 9
    for name in names:
        assert f"patches.{name}" in readme, f"patches/README.md has no row for {name}"


# --- upstream contracts ---------------------------------------------------------------------


def test_contract_openrlhf_torch_cuda_calls():
    strategy = _source("openrlhf", "utils/deepspeed/deepspeed.py")
    assert "torch.cuda.set_device(local_rank)" in strategy
    assert "data.to(torch.cuda.current_device())" in strategy
    assert "torch.cuda.synchronize()" in _source("openrlhf", "utils/distributed_util.py")
    actor = _source("openrlhf", "trainer/ray/ppo_actor.py")
    assert "device = torch.cuda.current_device()" in actor
    assert "stream=torch.cuda.current_stream()" in actor


def test_contract_replay_buffer_target_device():
    source = _source("openrlhf", "trainer/ppo_utils/replay_buffer.py")
    assert 'self.target_device = torch.device(f"cuda:{torch.cuda.current_device()}")' in source
    assert "experience.to_device(self.target_device)" in source


def test_contract_weight_sync_group():
    util = _source("openrlhf", "utils/distributed_util.py")
    assert "def stateless_init_process_group(master_address, master_port, rank, world_size, device):" in util
    assert "PyNcclCommunicator" in util
    actor = _source("openrlhf", "trainer/ray/ppo_actor.py")
    # imported by name at module level: our patch must run before ppo_actor imports it
    assert "from openrlhf.utils.distributed_util import stateless_init_process_group" in actor
    assert "self._model_update_group.broadcast(param.data, src=0, stream=torch.cuda.current_stream())" in actor
    wrap = _source("openrlhf", "trainer/ray/vllm_worker_wrap.py")
    assert "from openrlhf.utils.distributed_util import stateless_init_process_group" in wrap  # at call time


def test_contract_vllm_weight_update():
    wrap = _source("openrlhf", "trainer/ray/vllm_worker_wrap.py")
    assert "def update_weight(self, name, dtype, shape, empty_cache=False):" in wrap
    assert "self._model_update_with_ray" in wrap
    actor = _source("openrlhf", "trainer/ray/ppo_actor.py")
    # the last parameter of a sync is the one sent with empty_cache=True
    assert "empty_cache=count == num_params" in actor
    runner = _source("vllm", "v1/worker/gpu_model_runner.py")
    signature = (
        "def reload_weights(\n        self,\n        weights_iterator: Iterable[tuple[str, torch.Tensor]] | None"
    )
    assert signature + " = None," in runner
    assert "class CPUModelRunner(GPUModelRunner):" in _source("vllm", "v1/worker/cpu_model_runner.py")


def test_contract_deepspeed_shm_op():
    source = _source("deepspeed", "comm/torch.py")
    assert "def build_shm_op():" in source
    assert "self.shm_comm_op = build_shm_op()" in source
    assert "if self.shm_comm_op != None:" in source


def test_contract_deepspeed_torch_adam():
    strategy = _source("openrlhf", "utils/deepspeed/deepspeed.py")
    assert "def get_ds_train_config(self, optim_dict: Optional[dict] = None" in strategy
    assert '"type": "AdamW",' in strategy
    engine = _source("deepspeed", "runtime/engine.py")
    assert "torch_adam = optimizer_parameters.pop(TORCH_ADAM_PARAM, False)" in engine
    assert 'TORCH_ADAM_PARAM = "torch_adam"' in _source("deepspeed", "runtime/config.py")


def test_contract_compute_dtype():
    utils = _source("openrlhf", "utils/utils.py")
    assert "def convert_to_torch_dtype(param_dtype: str) -> torch.dtype:" in utils
    # Every caller imports it at call time, so the patched module attribute is what they get.
    for path in ("models/actor.py", "models/model.py"):
        assert "    from openrlhf.utils.utils import convert_to_torch_dtype" in _source("openrlhf", path), path
    engine = _source("openrlhf", "trainer/ray/vllm_engine.py")
    assert '"dtype": "bfloat16",' in engine
    assert "engine_args = vllm.AsyncEngineArgs(*args, **self.kwargs)" in engine
    ds_utils = _source("openrlhf", "utils/deepspeed/deepspeed_utils.py")
    assert ds_utils.count('"enabled": param_dtype == "bf16",') == 2  # train and eval configs
    strategy = _source("openrlhf", "utils/deepspeed/deepspeed.py")
    assert "def get_ds_eval_config(self, offload=False):" in strategy


def test_compute_dtype_env(monkeypatch):
    monkeypatch.delenv(patches.DTYPE_ENV, raising=False)
    assert patches.compute_dtype() == "float32"
    assert launch.cpu_env()[patches.DTYPE_ENV] == "float32"
    monkeypatch.setenv(patches.DTYPE_ENV, "bfloat16")
    assert launch.cpu_env()[patches.DTYPE_ENV] == "bfloat16"
    monkeypatch.setenv(patches.DTYPE_ENV, "fp8")
    with pytest.raises(ValueError, match=r"OPENRLHF_MEDS_CPU_DTYPE='fp8': use one of float32, bfloat16"):
        patches.compute_dtype()


def test_contract_sft_dataset_num_processors():
    source = _source("openrlhf", "datasets/sft_dataset.py")
    assert "num_processors=8," in source
    assert "num_proc=num_processors," in source


def test_contract_flash_attn_names():
    source = _source("openrlhf", "models/ring_attn_utils.py")
    assert "from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input" in source
    assert "from flash_attn.utils.distributed import all_gather" in source


# --- what we add ----------------------------------------------------------------------------


def test_flash_attn_fallback_unpad_pad_roundtrip(monkeypatch):
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("a real flash-attn is installed")
    monkeypatch.syspath_prepend(patches.FALLBACK_DIR)
    from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input

    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    flat, indices, cu_seqlens, max_seqlen, used = unpad_input(x, mask)
    assert indices.tolist() == [0, 1, 2, 4, 5]
    assert cu_seqlens.tolist() == [0, 3, 5] and max_seqlen == 3 and used.tolist() == [3, 2]
    assert torch.equal(flat, x.reshape(8, 3)[[0, 1, 2, 4, 5]])
    back = pad_input(flat, indices, 2, 4)
    assert torch.equal(back, x * mask[..., None])
    back.sum().backward()  # differentiable, as OpenRLHF's training forward needs
    assert torch.equal(x.grad, mask[..., None].float().expand(2, 4, 3))
    assert torch.equal(index_first_axis(rearrange(x, "b s d -> (b s) d"), indices), flat)


def test_gloo_broadcast_group_sends_bf16():
    from openrlhf_meds.cpu.launch import free_port

    port = free_port()
    sent = torch.randn(5, 7).to(torch.bfloat16)
    received = torch.empty(5, 7, dtype=torch.bfloat16)
    groups = {}

    def rank(r):
        groups[r] = patches.GlooBroadcastGroup("127.0.0.1", port, r, 2)
        groups[r].broadcast(sent.clone() if r == 0 else received, src=0, stream=None)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert torch.equal(received, sent)


STARTUP_CHECK = r"""
import sys, torch
import flash_attn.bert_padding, flash_attn.utils.distributed
assert flash_attn.__file__.startswith(sys.argv[1]), flash_attn.__file__
import deepspeed.comm.torch
assert sys.modules["deepspeed.comm.torch"].build_shm_op() is None  # (deepspeed.comm.torch is torch)
from openrlhf.trainer.ray import ppo_actor, vllm_worker_wrap
from openrlhf.utils import distributed_util
from openrlhf_meds.cpu import patches
assert ppo_actor.stateless_init_process_group is distributed_util.stateless_init_process_group
assert "GlooBroadcastGroup" in ppo_actor.stateless_init_process_group.__code__.co_names
assert vllm_worker_wrap.WorkerWrap.update_weight.__module__ == "openrlhf_meds.cpu.patches"
torch.cuda.set_device(0); torch.cuda.synchronize()
assert torch.cuda.current_device() == torch.device("cpu") and torch.cuda.current_stream() is None
from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer
assert NaiveReplayBuffer(1).target_device == torch.device("cpu")
from openrlhf.utils.deepspeed.deepspeed import DeepspeedStrategy
from openrlhf.utils.utils import convert_to_torch_dtype
from openrlhf.trainer.ray.vllm_engine import RolloutRayActor
assert convert_to_torch_dtype("bf16") == torch.float32  # float32 mode (cpu_env's default)
assert RolloutRayActor.__ray_metadata__.modified_class.__init__.__code__.co_filename == patches.__file__
print("startup patches ok")
"""


@pytest.mark.slow
def test_startup_installs_patches_in_a_fresh_process():
    """A child with cpu_env() gets every patch from startup/sitecustomize.py (as Ray workers and
    vLLM processes do), without importing anything of ours explicitly."""
    env = {**os.environ, **launch.cpu_env()}
    result = subprocess.run(
        [sys.executable, "-c", STARTUP_CHECK, patches.FALLBACK_DIR],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "startup patches ok" in result.stdout
