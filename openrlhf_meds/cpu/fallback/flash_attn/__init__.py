"""CPU stand-in for flash-attn's pure-torch helpers, used only when flash-attn is absent.

OpenRLHF 0.11.2 imports `flash_attn.bert_padding` and `flash_attn.utils.distributed` at
module level (openrlhf/models/ring_attn_utils.py), but flash-attn cannot be installed without
CUDA. `openrlhf_meds.cpu.patches.install` appends the folder holding this package to the END
of sys.path, so a real flash-attn (searched first) always wins. Its CUDA attention kernels
cannot exist on CPU and are not provided: transformers still reports flash-attn unavailable
(no distribution metadata), so use `--ds.attn_implementation eager`.
"""
