"""Fixtures of the engine tests that drive the MEDS logits processor by hand (no engine)."""

import importlib.util
import os

import pytest


def load_engine_step():
    """benchmarks/engine_step.py as a module: its `StandInModel` is the model side of a
    processor without vLLM's engine."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "engine_step.py")
    spec = importlib.util.spec_from_file_location("engine_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def engine_step():
    return load_engine_step()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """The Qwen tokenizer saved to a folder (the processor loads its engine's tokenizer)."""
    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    path = str(tmp_path_factory.mktemp("qwen_tokenizer"))
    build_qwen_tokenizer(path)
    return path


@pytest.fixture
def processor_config(engine_step, tokenizer_dir):
    """What a VllmConfig gives the MEDS processor (a fresh object each time: processors find
    their model by its id)."""
    return engine_step.processor_config(tokenizer_dir, max_num_seqs=8)
