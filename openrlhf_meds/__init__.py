"""openrlhf_meds: MEDS (Memory-Enhanced Dynamic reward Shaping) on OpenRLHF's Ray pipeline.

`openrlhf_meds.meds` holds the algorithm (no Ray, vLLM or OpenRLHF imports); the other
subpackages integrate it with Ray, vLLM and OpenRLHF.
"""

__version__ = "0.1.0"
