"""Installs openrlhf_meds' CPU patches at interpreter start, in every process.

`openrlhf_meds.cpu.launch` puts this folder first on PYTHONPATH and sets OPENRLHF_MEDS_CPU=1,
so the driver's children, Ray workers and vLLM's EngineCore / worker processes all run it.
Without the variable it does nothing. (This shadows any other `sitecustomize` further along
sys.path; the project's Python has none.)
"""

import os

if os.environ.get("OPENRLHF_MEDS_CPU") == "1":
    from openrlhf_meds.cpu import patches

    patches.install()
