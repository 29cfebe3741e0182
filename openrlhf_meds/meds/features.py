"""The MEDS feature of a rollout: per-layer logits of its first answer token
(docs/algorithm.md, the feature: steps 3-4) for a Hugging Face decoder-only causal LM.

Only one hidden row per layer and sequence is kept (forward hooks), the forward stops at the
final norm (no lm_head over the sequence), and the logits use the single lm_head row of the
target token, so the cost beyond a plain forward is O(layers x hidden) per rollout.

Every feature source (these hooks, the vLLM engines, the policy forward) ends with
`finish_logits`: each per-layer logit rounded to `--meds.feature_dtype` (bf16 by default, as
the official code's lm_head under bf16 autocast gives it), then the optional layer diff.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .answer import answer_target
from .config import MedsConfig


def feature_width(config: MedsConfig, num_layers: int) -> int:
    """Length of the feature vector for a model with `num_layers` decoder layers.

    Raises ValueError when the window (`--meds.layers`) does not fit the model: it can hold
    at most `num_layers` logits, or `num_layers - 1` differences with `layer_diff`.
    """
    n = num_layers // 2 if config.layers == "half" else config.layers
    available = num_layers - 1 if config.layer_diff else num_layers
    if not 1 <= n <= available:
        what = "layer differences (--meds.layer_diff)" if config.layer_diff else "layers"
        raise ValueError(
            f"--meds.layers={config.layers!r}: a window of {n} needs {n} {what}, but the model "
            f"has {num_layers} decoder layers, i.e. {available} {what}"
        )
    return n


def round_logits(logits, config: MedsConfig):
    """Per-layer logits at the precision `--meds.feature_dtype` asks for, as float32.

    bf16: each value rounded to the nearest bfloat16 (ties to even, torch's and CUDA's
    float -> bfloat16 conversion) and held as float32, as the official code's lm_head under
    bf16 autocast returns it (then cast to float); float32: unchanged. `logits` is a torch
    tensor or a numpy array; the result is of the same kind. NaN stays NaN.
    """
    if config.feature_dtype == "float32":
        return logits
    if isinstance(logits, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).to(torch.bfloat16).float().numpy()
    return logits.float().to(torch.bfloat16).float()


def finish_logits(logits, config: MedsConfig):
    """The feature from per-layer logits `[rows, n]` (`[rows, n + 1]` with `layer_diff`), the
    last step of every feature source: each logit rounded (`round_logits`), then with
    `--meds.layer_diff` the differences of consecutive layers, taken in float32 on the
    rounded logits (as the reference diffs the logits it got from its bf16 lm_head).
    Torch tensor or numpy array in, the same kind out."""
    logits = round_logits(logits, config)
    if not config.layer_diff:
        return logits
    return np.diff(logits, axis=1) if isinstance(logits, np.ndarray) else logits.diff(dim=1)


def bf16_steps(a, b) -> np.ndarray:
    """How many bfloat16 numbers apart `a` and `b` are, elementwise (0: bit-equal, 1:
    neighbours); both must hold bfloat16 values stored as float32 (ValueError otherwise).
    +0 and -0 count as equal. Used to compare features from different sources."""
    a, b = (np.ascontiguousarray(x) for x in np.broadcast_arrays(np.asarray(a, np.float32), np.asarray(b, np.float32)))

    def ordered(x):
        bits = x.view(np.uint32)
        if (bits & 0xFFFF).any():
            raise ValueError("bf16_steps needs bfloat16 values (float32 with the low 16 bits zero)")
        top = (bits >> 16).astype(np.int64)
        # Sign-magnitude to one integer line on which neighbouring bfloat16 numbers differ by 1.
        return np.where(top & 0x8000, -(top & 0x7FFF), top)

    return np.abs(ordered(a) - ordered(b))


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
    """(inner model, decoder layers, final norm, lm_head) of a Hugging Face causal LM;
    TypeError for other layouts."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    norm = getattr(inner, "norm", None)
    lm_head = getattr(model, "lm_head", None)
    if not (
        isinstance(layers, nn.ModuleList)
        and isinstance(norm, nn.Module)
        and isinstance(getattr(lm_head, "weight", None), torch.Tensor)
    ):
        raise TypeError(
            f"MEDS features need a Hugging Face causal LM laid out as model.model.layers, "
            f"model.model.norm and model.lm_head (Qwen2, Qwen3, Llama, ...); "
            f"{type(model).__name__} is not"
        )
    return inner, layers, norm, lm_head


@contextlib.contextmanager
def _capture_rows(
    modules: dict[int, nn.Module], rows: torch.Tensor, positions: torch.Tensor
) -> Iterator[dict[int, torch.Tensor]]:
    """While active, `captured[k]` receives the row `positions[i]` of sequence `rows[i]` of
    module k's output: a [batch, hidden] copy, so the full [batch, T, hidden] output is freed."""
    captured: dict[int, torch.Tensor] = {}

    def hook(k):
        def keep_row(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[k] = hidden[rows, positions]  # advanced indexing copies just these rows

        return keep_row

    handles = [module.register_forward_hook(hook(k)) for k, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layer_logit_features(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor | Sequence[int],
    targets: torch.Tensor | Sequence[int],
    config: MedsConfig,
) -> torch.Tensor:
    """Per-layer logits of the target tokens: a float32 tensor [batch, feature_width].

    `input_ids`, `attention_mask`: [batch, T] prompt + response, left or right padded (any
    mix). `positions[i]`: index in row i of the brace token (a real token, not padding);
    `targets[i]`: y*, the token after it. Row i of the result is
    `(l_{L-n+1}, ..., l_L)` with `l_k = W_lm[y*] . h_k (+ bias)`, where h_k is the residual
    stream at the brace after k layers and h_L is after the final norm (`config.logit_lens`:
    every h_k is normed); with `config.layer_diff`, the last n of `diff(l_1..l_L)`.
    The dot products are float32 whatever the model's dtype; each l_k is then rounded to
    `config.feature_dtype` (bf16 by default, see `round_logits`) before any diff. The model
    is run as it is (call `.eval()` first if it has dropout).
    """
    inner, layers, _, lm_head = decoder_parts(model)
    n = feature_width(config, len(layers))

    device = lm_head.weight.device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device)
    positions = torch.as_tensor(positions, dtype=torch.long, device=device)
    targets = torch.as_tensor(targets, dtype=torch.long, device=device)
    batch = input_ids.shape[0]
    if positions.shape != (batch,) or targets.shape != (batch,):
        raise ValueError(
            f"positions and targets must have shape ({batch},), got {tuple(positions.shape)} and {tuple(targets.shape)}"
        )
    if batch == 0:
        return torch.empty(0, n, device=device)
    rows = torch.arange(batch, device=device)
    if int(positions.min()) < 0 or int(positions.max()) >= input_ids.shape[1]:
        raise ValueError(f"positions must lie in [0, {input_ids.shape[1]}), got {positions.tolist()}")
    if not bool(attention_mask[rows, positions].all()):
        raise ValueError("every position must point at a real (unmasked) token")

    # Causal attention: tokens after the last brace cannot change any captured row.
    width = int(positions.max()) + 1
    input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
    # Positions count real tokens only, so left and right padding give the same rows.
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    # Running the inner model ends the forward at the final norm: lm_head is never applied
    # to the sequence.
    with capture_feature_rows(model, rows, positions, config) as captured:
        inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return logits_from_rows(model, captured, targets, config)


@contextlib.contextmanager
def capture_feature_rows(
    model: nn.Module, rows: torch.Tensor, positions: torch.Tensor, config: MedsConfig
) -> Iterator[dict[int, torch.Tensor]]:
    """Hooks on the modules a feature reads, for forwards run while the context is active.

    `captured[k]` receives h_k at (`rows[i]`, `positions[i]`) of the hidden states
    ([batch, T, hidden]) as a [batch, hidden] copy: the raw output of decoder layer k for
    the layers the window needs, and for k = L the final norm's output. Feed it to
    `logits_from_rows`. Raises ValueError if the window (`--meds.layers`) does not fit.
    """
    _, layers, norm, _ = decoder_parts(model)
    num_layers = len(layers)
    n = feature_width(config, num_layers)
    first = num_layers - n - int(config.layer_diff)  # l_{first+1} .. l_L are needed
    modules = {k: layers[k - 1] for k in range(first + 1, num_layers)}
    modules[num_layers] = norm
    with _capture_rows(modules, rows, positions) as captured:
        yield captured


def logits_from_rows(
    model: nn.Module, captured: dict[int, torch.Tensor], targets: torch.Tensor, config: MedsConfig
) -> torch.Tensor:
    """The features [batch, feature_width] (float32) from the rows `capture_feature_rows`
    kept and the target tokens y* (long, on the model's device): `W_lm[y*] . h_k (+ bias)`
    in float32, finished by `finish_logits` (rounding, diff), see `layer_logit_features`.
    Under DeepSpeed ZeRO-3, call it with the lm_head's (and for `config.logit_lens` the final
    norm's) parameters gathered."""
    _, _, norm, lm_head = decoder_parts(model)
    ks = sorted(captured)
    hidden = [norm(captured[k]) if config.logit_lens else captured[k] for k in ks[:-1]]
    hidden = torch.stack([*hidden, captured[ks[-1]]], dim=1).float()  # [batch, n(+1), H]

    weight = lm_head.weight[targets].float()  # [batch, H]: only the rows of y*
    logits = torch.einsum("bkh,bh->bk", hidden, weight)
    if getattr(lm_head, "bias", None) is not None:
        logits = logits + lm_head.bias[targets].float()[:, None]
    return finish_logits(logits, config)


def response_features(
    model: nn.Module,
    tokenizer,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    config: MedsConfig,
    batch_size: int = 8,
) -> np.ndarray:
    """Features of whole rollouts: a float32 array [rollouts, feature_width], NaN rows for
    rollouts without a feature (no `\\boxed{` answer, see `answer_target`); values at the
    precision of `config.feature_dtype`, as `layer_logit_features`.

    Finds each target with `answer_target`, feeds prompt + response up to the brace token
    (nothing after it matters), right padded, `batch_size` rollouts per forward.
    """
    if len(prompt_ids_list) != len(response_ids_list):
        raise ValueError("prompt_ids_list and response_ids_list must have the same length")
    _, layers, _, _ = decoder_parts(model)
    out = np.full((len(response_ids_list), feature_width(config, len(layers))), np.nan, dtype=np.float32)

    jobs = []  # (rollout index, prompt + response up to the brace, y*)
    for i, (prompt, response) in enumerate(zip(prompt_ids_list, response_ids_list)):
        found = answer_target(response, tokenizer)
        if found is not None:
            p, y_star = found
            prompt = torch.as_tensor(prompt, dtype=torch.long).flatten().cpu()
            response = torch.as_tensor(response, dtype=torch.long).flatten().cpu()
            jobs.append((i, torch.cat([prompt, response[: p + 1]]), y_star))

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        lengths = [len(seq) for _, seq, _ in chunk]
        input_ids = torch.full((len(chunk), max(lengths)), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, (_, seq, _) in enumerate(chunk):
            input_ids[row, : len(seq)] = seq
            attention_mask[row, : len(seq)] = 1
        features = layer_logit_features(
            model,
            input_ids,
            attention_mask,
            positions=[length - 1 for length in lengths],
            targets=[y_star for _, _, y_star in chunk],
            config=config,
        )
        out[[i for i, _, _ in chunk]] = features.cpu().numpy()
    return out
