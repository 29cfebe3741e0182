"""The pinned versions (`openrlhf_meds/versions.py`) are the installed ones, and a mismatch is
refused with the package named."""

import pytest

from openrlhf_meds import versions
from openrlhf_meds.cpu import patches


def test_the_installed_versions_are_the_pinned_ones():
    import vllm

    assert vllm.__version__.startswith(versions.VLLM_SERIES), vllm.__version__
    versions.check_versions()  # the replacements were read in these
    versions.check_versions(versions.CPU_VERSIONS)
    patches.check_versions()
    versions.check_vllm_version()


def test_a_mismatch_names_the_package(monkeypatch):
    with pytest.raises(RuntimeError, match=r"openrlhf==9\.9 \(found 0\.11\.2\)"):
        versions.check_versions({"openrlhf": "9.9"})
    with pytest.raises(RuntimeError, match=r"vllm==0\.30\.x \(found 0\.29\."):
        versions.check_versions({"vllm": "0.30."})
    monkeypatch.setitem(versions.CPU_VERSIONS, "deepspeed", "0.0.1")
    with pytest.raises(RuntimeError, match=r"CPU mode .* deepspeed==0\.0\.1 \(found 0\.19\.6\)"):
        patches.check_versions()
    with pytest.raises(RuntimeError, match=r"needs vLLM 0\.29\.x .* vllm 0\.30\.1 is installed"):
        versions.check_vllm_version("0.30.1")
