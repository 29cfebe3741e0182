"""These tests import OpenRLHF, which needs flash-attn's helpers and CUDA calls that a CPU machine
lacks: CPU mode's patches go in before any test module here is imported."""

from openrlhf_meds.cpu import patches

patches.install()
