"""flash-attn's `all_gather` name, for OpenRLHF's import only.

OpenRLHF calls it only with ring attention (`--ds.ring_attn_size > 1`), which also needs the
ring-flash-attn CUDA kernels: that cannot run on CPU, so this stub says so instead.
"""


def all_gather(input_, process_group, async_op=False):
    raise NotImplementedError(
        "ring attention (--ds.ring_attn_size > 1) needs flash-attn / ring-flash-attn CUDA kernels; "
        "it is not available in openrlhf_meds' CPU mode"
    )
