"""--meds.features semantic (the paper's ablation): a tiny local BERT encoder (conftest) embeds the
response texts; the embeddings go through the same ErrorMemory as the logit features."""

import numpy as np
import pytest
import torch

from openrlhf_meds.meds.config import MedsConfig
from openrlhf_meds.meds.memory import ErrorMemory
from openrlhf_meds.meds.semantic import SemanticEncoder


def _direct_embeddings(path: str, texts: list[str]) -> np.ndarray:
    """Each text alone through the encoder, pooled by hand: the reference for `encode`."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    rows = []
    for text in texts:
        with torch.no_grad():
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
        mean = hidden.mean(dim=0)
        rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


TEXTS = [
    "The answer is \\boxed{5}.",
    "We add 2 and 3, which gives a much longer derivation before \\boxed{5}.",
    "So x = 7.",
]


def test_encode_is_the_normalised_mean_of_the_last_hidden_state_whatever_the_batch(tiny_encoder):
    enc = SemanticEncoder(tiny_encoder, batch_size=2)
    got = enc.encode(TEXTS)
    assert got.shape == (3, 32) and got.dtype == np.float32 and enc.dim == 32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # padded beside longer texts, each row is the text's own
    np.testing.assert_allclose(got, _direct_embeddings(tiny_encoder, TEXTS), atol=1e-5)
    assert not np.allclose(got[0], got[1])
    assert np.isnan(enc.encode([""])).all()  # no tokens, no embedding
    with pytest.raises(TypeError, match="sequence of texts"):
        enc.encode("one string")


def test_rollouts_without_a_boxed_answer_get_no_feature(tiny_encoder, qwen_tokenizer):
    enc = SemanticEncoder(tiny_encoder)
    responses = [qwen_tokenizer.encode(t) for t in TEXTS]
    feats = enc.rollout_features(qwen_tokenizer, responses)
    assert np.isnan(feats[2]).all() and not np.isnan(feats[:2]).any()
    np.testing.assert_allclose(feats[:2], enc.encode(TEXTS[:2]), atol=1e-6)


def test_repeated_wrong_texts_are_penalised_through_the_same_memory(tiny_encoder, qwen_tokenizer):
    config = MedsConfig(features="semantic", embedding_model=tiny_encoder, alpha=0.1)
    enc = SemanticEncoder(config.embedding_model)
    memory = ErrorMemory(config)
    wrong = "I think it is \\boxed{4}."
    other = ["Maybe \\boxed{9} after all.", "Counting again: \\boxed{12}.", "Surely \\boxed{1}."]
    penalties = []
    for step in range(4):
        texts = [wrong, wrong, other[step % 3], TEXTS[0]]
        feats = enc.rollout_features(qwen_tokenizer, [qwen_tokenizer.encode(t) for t in texts])
        sizes, pens = memory.step(["p"] * 4, feats, np.array([False, False, False, True]))
        penalties.append(pens)
    assert memory.dim == 32
    assert penalties[0].tolist() == [0, 0, 0, 0]  # the first visit is free
    # The repeated wrong text lands in its own past cluster (2 copies a step), capped at beta.
    assert penalties[-1][0] == penalties[-1][1] == pytest.approx(min(0.1 * np.log(6 + 1), config.beta))
    assert penalties[-1][3] == 0  # right answers are not targeted


def test_config_errors_name_the_flags(tiny_encoder):
    with pytest.raises(ValueError, match="--meds.features semantic needs --meds.embedding_model"):
        MedsConfig(features="semantic")
    from openrlhf_meds.meds.config import resolve_config

    with pytest.raises(ValueError, match="embedding_model"):
        resolve_config(overrides={"embedding_model": tiny_encoder})
    with pytest.raises(ValueError, match="layers"):
        resolve_config(overrides={"features": "semantic", "embedding_model": tiny_encoder, "layers": 4})
    with pytest.raises(RuntimeError, match="--meds.embedding_model /nonexistent/encoder"):
        SemanticEncoder("/nonexistent/encoder").load()
