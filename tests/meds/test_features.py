"""layer_logit_features against a plain output_hidden_states + lm_head computation
(docs/algorithm.md, the feature: steps 3-4), and the bf16 rounding of every feature
(`--meds.feature_dtype`). The comparisons with the float32 reference use
`feature_dtype="float32"`: rounding would hide (or, at a rounding boundary, magnify) the
float32 summation-order differences they bound."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from openrlhf_meds.meds import features as features_module
from openrlhf_meds.meds.config import MedsConfig
from openrlhf_meds.meds.features import (
    bf16_steps,
    feature_width,
    finish_logits,
    layer_logit_features,
    response_features,
    round_logits,
)

PAD = 151643
F32 = dict(feature_dtype="float32")  # the float32 dot products as they are, no bf16 rounding


@torch.no_grad()
def reference(model, sequences, positions, targets, layers=14, layer_diff=False, logit_lens=False):
    """One unpadded sequence at a time; every hidden state; the full float32 vocabulary logits."""
    rows = []
    for ids, p, y in zip(sequences, positions, targets):
        hidden_states = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        num_layers = len(hidden_states) - 1  # entry 0 is the embeddings, entry L is normed
        h = [hidden_states[k][0, p] for k in range(1, num_layers + 1)]
        if logit_lens:
            h = [model.model.norm(x) for x in h[:-1]] + [h[-1]]
        weight = model.lm_head.weight.float()
        bias = model.lm_head.bias.float() if model.lm_head.bias is not None else 0.0
        logits = (torch.stack(h).float() @ weight.T + bias)[:, y].numpy()  # [L]
        if layer_diff:
            logits = np.diff(logits)
        n = num_layers // 2 if layers == "half" else layers
        rows.append(logits[-n:])
    return torch.tensor(np.array(rows), dtype=torch.float32)


def mixed_batch(vocab, lengths=(7, 12, 9, 5), brace=(4, 9, 8, 2), seed=0):
    """Random sequences in one batch, rows 0 and 2 left padded, 1 and 3 right padded; the
    brace is not always the last token, so the tokens after it must not matter."""
    g = torch.Generator().manual_seed(seed)
    sequences = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
    targets = torch.randint(0, vocab, (len(lengths),), generator=g).tolist()
    width = max(lengths) + 2
    input_ids = torch.full((len(lengths), width), PAD % vocab)
    attention_mask = torch.zeros_like(input_ids)
    positions = []
    for i, (seq, p) in enumerate(zip(sequences, brace)):
        start = width - len(seq) if i % 2 == 0 else 0
        input_ids[i, start : start + len(seq)] = torch.tensor(seq)
        attention_mask[i, start : start + len(seq)] = 1
        positions.append(start + p)
    return sequences, list(brace), targets, input_ids, attention_mask, positions


OPTIONS = [
    dict(layers=14),
    dict(layers="half"),
    dict(layers=16),
    dict(layers=1),
    dict(layers=14, layer_diff=True),
    dict(layers=15, layer_diff=True),
    dict(layers=14, logit_lens=True),
    dict(layers="half", layer_diff=True, logit_lens=True),
]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_matches_hidden_states_reference(request, tied, options):
    model = request.getfixturevalue("tiny_qwen2_tied" if tied else "tiny_qwen2")
    assert len(model.model.layers) == 16
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    sequences, brace, targets, input_ids, attention_mask, positions = mixed_batch(PAD)
    got = layer_logit_features(model, input_ids, attention_mask, positions, targets, MedsConfig(**options, **F32))
    want = reference(model, sequences, brace, targets, **options)
    assert got.dtype == torch.float32
    assert got.shape == (4, feature_width(MedsConfig(**options), 16))
    # float32 both sides; padding only changes the summation order (observed ~2e-7).
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_last_layer_is_the_models_own_logit(tiny_qwen2):
    sequences, brace, targets, input_ids, attention_mask, positions = mixed_batch(PAD, seed=1)
    got = layer_logit_features(tiny_qwen2, input_ids, attention_mask, positions, targets, MedsConfig(layers=2, **F32))
    with torch.no_grad():
        logits = [tiny_qwen2(torch.tensor([s])).logits[0, p, y] for s, p, y in zip(sequences, brace, targets)]
    torch.testing.assert_close(got[:, -1], torch.stack(logits), rtol=1e-4, atol=1e-5)
    # ... and the layer before it is a different, raw (un-normed) residual stream.
    assert (got[:, 0] - got[:, 1]).abs().min() > 1e-3


def test_window_too_large(tiny_qwen2):
    batch = mixed_batch(PAD)[3:]
    with pytest.raises(ValueError, match=r"--meds\.layers=17.*16 decoder layers"):
        layer_logit_features(tiny_qwen2, *batch[:2], batch[2], [1] * 4, MedsConfig(layers=17))
    # diff(l) has only 15 entries for 16 layers.
    with pytest.raises(ValueError, match=r"--meds\.layers=16.*16 decoder layers, i\.e\. 15 layer diff"):
        layer_logit_features(tiny_qwen2, *batch[:2], batch[2], [1] * 4, MedsConfig(layers=16, layer_diff=True))


def test_bfloat16_model_gives_float32_features(tiny_qwen2):
    model = copy.deepcopy(tiny_qwen2).to(torch.bfloat16)
    sequences, brace, targets, input_ids, attention_mask, positions = mixed_batch(PAD)
    # One unpadded sequence per call, as the reference runs: CPUs without native bf16 use a
    # bf16 GEMM whose rounding depends on the batch shape, so padded batches see other bf16
    # activations there (~3e-3 apart). Padding itself is checked in float32 above.
    got = torch.cat(
        [
            layer_logit_features(
                model,
                torch.tensor([s]),
                torch.ones(1, len(s), dtype=torch.long),
                [p],
                [y],
                MedsConfig(layers=14, **F32),
            )
            for s, p, y in zip(sequences, brace, targets)
        ]
    )
    assert got.dtype == torch.float32
    # The reference reads the same bf16 activations and takes float32 dot products, so only the
    # float32 summation order differs (observed < 1e-7). 1e-4 still rejects a bf16 dot product
    # (its rounding alone is up to ~2e-3 at |l| ~ 0.7) and the float32 model's values (~2e-3 away).
    want = reference(model, sequences, brace, targets, layers=14)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    float32_model = layer_logit_features(tiny_qwen2, input_ids, attention_mask, positions, targets, MedsConfig(**F32))
    assert (got - float32_model).abs().max() > 1e-4
    # Products of bf16 numbers summed in float32 are (almost all) not bf16 numbers.
    assert (got.to(torch.bfloat16).float() != got).float().mean() > 0.9


def hook_ids(model):
    # transformers 5 installs its own (idle) output-capturing hooks on first use: compare sets.
    return [list(m._forward_hooks) for m in [*model.model.layers, model.model.norm]]


def test_hooks_keep_one_row_per_layer_and_skip_lm_head(tiny_qwen2, monkeypatch):
    hooks_before = hook_ids(tiny_qwen2)
    seen = []
    original = features_module._capture_rows

    def spy(modules, rows, positions):
        with original(modules, rows, positions) as captured:
            seen.append(captured)
            yield captured

    monkeypatch.setattr(features_module, "_capture_rows", features_module.contextlib.contextmanager(spy))
    lm_head_calls = []
    handle = tiny_qwen2.lm_head.register_forward_hook(lambda *args: lm_head_calls.append(1))
    try:
        _, _, targets, input_ids, attention_mask, positions = mixed_batch(PAD)
        layer_logit_features(tiny_qwen2, input_ids, attention_mask, positions, targets, MedsConfig(layer_diff=True))
    finally:
        handle.remove()
    assert lm_head_calls == []
    (captured,) = seen
    assert sorted(captured) == list(range(2, 17))  # h_2..h_16: 15 logits give 14 differences
    for tensor in captured.values():
        assert tensor.shape == (4, 128)
        # Its own storage, not a view into a [batch, T, hidden] layer output.
        assert tensor.untyped_storage().nbytes() == 4 * 128 * 4
    assert hook_ids(tiny_qwen2) == hooks_before


def test_hooks_are_removed_when_the_forward_fails(tiny_qwen2):
    hooks_before = hook_ids(tiny_qwen2)
    input_ids = torch.tensor([[1, 2, 10**7]])  # past the embedding table
    with pytest.raises(IndexError):
        layer_logit_features(tiny_qwen2, input_ids, torch.ones_like(input_ids), [2], [5], MedsConfig(layers=2))
    assert hook_ids(tiny_qwen2) == hooks_before


def test_positions_must_be_real_tokens(tiny_qwen2):
    input_ids = torch.tensor([[PAD, 1, 2]])
    mask = torch.tensor([[0, 1, 1]])
    with pytest.raises(ValueError, match="real"):
        layer_logit_features(tiny_qwen2, input_ids, mask, [0], [5], MedsConfig(layers=2))
    with pytest.raises(ValueError, match="positions"):
        layer_logit_features(tiny_qwen2, input_ids, mask, [3], [5], MedsConfig(layers=2))


def small_model(cls, config_cls, **extra):
    config = config_cls(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        **extra,
    )
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(
    "cls,config_cls", [(Qwen3ForCausalLM, Qwen3Config), (LlamaForCausalLM, LlamaConfig)], ids=["qwen3", "llama"]
)
def test_other_architectures_and_lm_head_bias(cls, config_cls):
    model = small_model(cls, config_cls)
    sequences, brace, targets, input_ids, attention_mask, positions = mixed_batch(512)
    for options in (dict(layers=4), dict(layers=3, layer_diff=True, logit_lens=True)):
        got = layer_logit_features(model, input_ids, attention_mask, positions, targets, MedsConfig(**options, **F32))
        torch.testing.assert_close(got, reference(model, sequences, brace, targets, **options), rtol=1e-4, atol=1e-5)
    model.lm_head = nn.Linear(64, 512, bias=True)
    nn.init.normal_(model.lm_head.bias, std=1.0)
    got = layer_logit_features(model, input_ids, attention_mask, positions, targets, MedsConfig(layers=4, **F32))
    torch.testing.assert_close(got, reference(model, sequences, brace, targets, layers=4), rtol=1e-4, atol=1e-5)


def test_unsupported_layout():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2))
    with pytest.raises(TypeError, match=r"model\.model\.layers.*GPT2LMHeadModel"):
        layer_logit_features(model, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3), [1], [1], MedsConfig())


def test_response_features(tiny_qwen2, qwen_tokenizer):
    tok = qwen_tokenizer
    prompts = [tok.encode("What is 2 + 2?"), tok.encode("Compute 1/2 + 0."), tok.encode("Say hi.")]
    responses = [
        tok.encode(" 2 + 2 = 4, so \\boxed{4}. Done.<|endoftext|>"),
        tok.encode("It is $\\boxed{\\frac{1}{2}}$<|endoftext|>"),
        tok.encode("hi<|endoftext|>"),
    ]
    config = MedsConfig(layers=14, **F32)
    got = response_features(tiny_qwen2, tok, prompts, responses, config, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (3, 14)
    assert np.isnan(got[2]).all() and not np.isnan(got[:2]).any()
    from openrlhf_meds.meds.answer import answer_target

    found = [answer_target(r, tok) for r in responses[:2]]
    want = reference(
        tiny_qwen2,
        [p + r for p, r in zip(prompts, responses)],
        [len(p) + f[0] for p, f in zip(prompts, found)],
        [f[1] for f in found],
    )
    np.testing.assert_allclose(got[:2], want.numpy(), rtol=1e-4, atol=1e-5)

    # The default (bf16) features of the same rollouts: each value rounded, the NaN row kept.
    rounded = response_features(tiny_qwen2, tok, prompts, responses, MedsConfig(layers=14), batch_size=2)
    assert np.isnan(rounded[2]).all()
    np.testing.assert_array_equal(rounded[:2], torch.from_numpy(got[:2]).to(torch.bfloat16).float().numpy())


# ---- --meds.feature_dtype: every per-layer logit rounded to bfloat16 (the default) ----------


def is_bf16(x: torch.Tensor) -> bool:
    """Whether every value of a float32 tensor is a bfloat16 number (low 16 bits zero)."""
    return bool(((x.contiguous().view(torch.int32) & 0xFFFF) == 0).all())


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_bf16_features_are_the_rounded_float32_logits(tiny_qwen2, options):
    sequences, brace, targets, input_ids, attention_mask, positions = mixed_batch(PAD, seed=2)
    args = (tiny_qwen2, input_ids, attention_mask, positions, targets)
    config = MedsConfig(**options)
    assert config.feature_dtype == "bf16"  # the default
    got = layer_logit_features(*args, config)
    full = layer_logit_features(*args, MedsConfig(**options, **F32))
    assert got.dtype == torch.float32 and got.shape == full.shape
    if config.layer_diff:
        # The reference diffs the logits its bf16 lm_head gave: the differences of the rounded
        # per-layer logits l_{L-n} .. l_L (n + 1 of them), taken in float32.
        per_layer = layer_logit_features(*args, MedsConfig(layers=got.shape[1] + 1, logit_lens=config.logit_lens))
        assert is_bf16(per_layer)
        assert torch.equal(got, per_layer.diff(dim=1))
        assert not torch.equal(got, full.to(torch.bfloat16).float())  # not the rounded differences
    else:
        assert is_bf16(got)
        assert torch.equal(got, full.to(torch.bfloat16).float())
    # The float32 dot products are (almost all) not bf16 numbers: the rounding really acted.
    assert (got != full).float().mean() > 0.9


def test_round_logits_on_tensors_and_arrays():
    x = torch.tensor([[0.1, -0.30078125, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8], [float("nan")] * 4])
    want = torch.tensor([[0.10009765625, -0.30078125, 1.0, 1.015625], [float("nan")] * 4])  # ties to even
    bf16 = MedsConfig()
    torch.testing.assert_close(round_logits(x, bf16), want, rtol=0, atol=0, equal_nan=True)
    arr = round_logits(x.numpy(), bf16)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, want.numpy())
    # Non-contiguous arrays (a window cut out of a wider one, as the engine client does).
    np.testing.assert_array_equal(round_logits(np.tile(x.numpy(), 2)[:, 4:], bf16), want.numpy())
    float32 = MedsConfig(**F32)
    assert round_logits(x, float32) is x
    np.testing.assert_array_equal(finish_logits(x.numpy(), float32), x.numpy())
    # finish_logits: round, then diff (numpy as torch).
    diff = MedsConfig(layers=3, layer_diff=True)
    np.testing.assert_array_equal(finish_logits(x[:1].numpy(), diff), np.diff(want[:1].numpy(), axis=1))
    torch.testing.assert_close(finish_logits(x[:1], diff), want[:1].diff(dim=1), rtol=0, atol=0)


def test_bf16_steps_counts_bfloat16_numbers_between():
    one = np.float32(1.0)
    up = np.float32(1.0 + 2.0**-7)  # the next bfloat16 after 1
    down = np.float32(1.0 - 2.0**-8)  # the one before it (finer spacing below a power of 2)
    np.testing.assert_array_equal(bf16_steps([one, one, one, 0.0, 2.0], [one, up, down, -0.0, up]), [0, 1, 1, 0, 127])
    # Across zero: the two smallest numbers of each sign are 2 steps apart (+0 / -0 are one).
    tiny = np.float32(2.0**-133)  # the smallest bfloat16 subnormal
    np.testing.assert_array_equal(bf16_steps([tiny], [-tiny]), [2])
    with pytest.raises(ValueError, match="bfloat16 values"):
        bf16_steps([0.1], [0.1])
