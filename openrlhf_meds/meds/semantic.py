"""Semantic features, the paper's ablation (`--meds.features semantic`).

Instead of the per-layer logits of the first answer token, a rollout's feature is an
embedding of its response text by a separate Hugging Face encoder (`--meds.embedding_model`:
`AutoModel` + `AutoTokenizer`): the encoder's last hidden state, mean-pooled over the text's
tokens (attention-masked), L2-normalised, float32. It goes through the same memory as the
logit features (the memory learns the width, the encoder's hidden size, from the first
vectors it gets).

Which rollouts get one follows the logit features' rule: a rollout whose response has no
`\\boxed{` answer (`answer_target` finds no brace followed by a token) gets a NaN row, so
the memory stores and penalises the same rollouts under either feature and counts the
rejected ones the same way.

Plain Python + torch + transformers: no Ray, vLLM or OpenRLHF.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from .answer import answer_target


class SemanticEncoder:
    """Embeds texts with the encoder at `path` (a local model directory or a hub name).

    The model and tokenizer are loaded on first use (`load`), in `dtype` on `device`, and kept.
    Texts are tokenized with the encoder's own tokenizer, right padded, truncated to the
    encoder's length limit (`max_length`, default: the smaller of the tokenizer's
    `model_max_length` and the config's `max_position_embeddings`), `batch_size` per forward.
    Safe to call from several threads (one forward at a time).
    """

    def __init__(
        self,
        path: str,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        dtype: torch.dtype = torch.float32,
        max_length: int | None = None,
    ):
        if not path:
            raise ValueError("--meds.embedding_model: the semantic encoder needs a model path or hub name")
        if batch_size < 1:
            raise ValueError(f"SemanticEncoder batch_size must be >= 1, got {batch_size}")
        self.path, self.device, self.batch_size, self.dtype = path, torch.device(device), batch_size, dtype
        self.max_length = max_length
        self.model = self.tokenizer = None
        self._lock = threading.RLock()

    def load(self) -> SemanticEncoder:
        """Load the encoder and its tokenizer (once); errors name `--meds.embedding_model`."""
        with self._lock:
            if self.model is None:
                self._load()
        return self

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModel.from_pretrained(self.path, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise RuntimeError(
                f"--meds.embedding_model {self.path}: cannot load it as AutoModel + AutoTokenizer: {e}"
            ) from e
        if getattr(model.config, "hidden_size", None) is None:
            raise ValueError(f"--meds.embedding_model {self.path}: its config has no hidden_size")
        if tokenizer.pad_token is None:
            # Padding only fills masked positions, so any token the tokenizer knows will do.
            fill = tokenizer.eos_token or tokenizer.unk_token
            if fill is None:
                raise ValueError(f"--meds.embedding_model {self.path}: its tokenizer has no pad, eos or unk token")
            tokenizer.pad_token = fill
        # Right padding keeps every real token at its own position (absolute position
        # embeddings, causal encoders), so a text's row does not depend on its batch.
        tokenizer.padding_side = "right"
        if self.max_length is None:
            limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
            self.max_length = min(int(n) for n in limits if isinstance(n, int) and 0 < n < 10**9)
        self.model, self.tokenizer = model.to(self.device).eval(), tokenizer

    @property
    def dim(self) -> int:
        """The embedding width: the encoder's hidden size (loads the encoder)."""
        return int(self.load().model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim]: each text's mean-pooled (over its tokens, attention
        masked), L2-normalised last hidden state. A text with no tokens gets a NaN row."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not a single string")
        out = np.full((len(texts), self.dim), np.nan, dtype=np.float32)
        with self._lock:
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                batch = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                mask = batch["attention_mask"]
                if mask.shape[1] == 0 or not mask.any():
                    continue
                hidden = self.model(**batch.to(self.device)).last_hidden_state.float()
                mask = mask.to(self.device, torch.float32)[:, :, None]
                counts = mask.sum(dim=1)
                mean = (hidden * mask).sum(dim=1) / counts.clamp(min=1)
                rows = torch.nn.functional.normalize(mean, p=2, dim=1)
                rows[counts[:, 0] == 0] = float("nan")
                out[start : start + len(chunk)] = rows.cpu().numpy()
        return out

    def rollout_features(self, tokenizer, response_ids_list: Sequence[Sequence[int]]) -> np.ndarray:
        """Semantic features of rollouts: float32 [rollouts, dim]. `tokenizer` is the
        policy's; `response_ids_list[i]` the generated token ids of rollout i. A rollout
        with a `\\boxed{` answer (`answer_target`) gets the embedding of its response text
        (decoded without special tokens), one without gets a NaN row."""
        out = np.full((len(response_ids_list), self.dim), np.nan, dtype=np.float32)
        keep = [i for i, ids in enumerate(response_ids_list) if answer_target(list(ids), tokenizer) is not None]
        if keep:
            texts = [tokenizer.decode(list(response_ids_list[i]), skip_special_tokens=True) for i in keep]
            out[keep] = self.encode(texts)
        return out
