"""`--meds.feature_source actor`: the MEDS features from OpenRLHF's training-side forward.

Every step, OpenRLHF's experience maker runs each rollout through the policy once to get
its log-probs (`PolicyModelActor.forward`, dispatched by `RemoteExperienceMaker.make_experience`).
`MedsPolicyModelActor` hooks the decoder layers during that same forward (no extra forward,
no `output_hidden_states`): one hidden row per needed layer at each rollout's answer brace,
turned into the feature (`openrlhf_meds.meds.features`) right after the forward.
`actor_features` then collects them in the experience maker's `samples_list` order, and
`submit_actor_features` sends each prompt group to the memory and tags its samples, as the
rollout engines do with `--meds.feature_source vllm`.

Use it when the vLLM feature patch (`--meds.feature_source vllm`) cannot run; the cost is
that features arrive after the whole batch is generated, not while it is generated.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

import deepspeed
import numpy as np
import ray
import torch
from openrlhf.trainer.ray.ppo_actor import PolicyModelActor

from ..meds.answer import answer_target
from ..meds.config import MedsConfig
from ..meds.features import capture_feature_rows, decoder_parts, feature_width, logits_from_rows
from .rollout_actor import (
    GROUP_ID,
    HAS_FEATURE,
    ROLLOUT,
    diversity_tags,
    final_answer,
    prompt_key,
    semantic_encoder,
)


def hf_model(actor) -> torch.nn.Module:
    """The Hugging Face causal LM inside an `openrlhf.models.Actor`, whether or not
    `strategy.prepare` wrapped it in a DeepSpeed engine, and under LoRA (PEFT)."""
    model = actor.model
    if isinstance(model, deepspeed.DeepSpeedEngine):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel: the LoRA layers sit inside it
        model = model.get_base_model()
    return model


def check_parallelism(ds_args) -> None:
    """`--meds.feature_source actor` reads hidden rows on one rank: no sequence or tensor
    parallelism (`ds_args` is OpenRLHF's `args.ds`)."""
    for flag, size in (
        ("ring_attn_size", ds_args.ring_attn_size),
        ("tensor_parallel_size", ds_args.tensor_parallel_size),
    ):
        if size > 1:
            raise ValueError(
                f"--meds.feature_source actor does not support --ds.{flag} {size} (a rollout's hidden "
                f"states are split across ranks); use --ds.{flag} 1 or --meds.feature_source vllm"
            )


def answer_positions(
    tokenizer, sequences: torch.Tensor, action_mask: torch.Tensor, attention_mask: torch.Tensor, packed: bool
) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each rollout's feature is read in the policy forward of this micro-batch.

    OpenRLHF's layout: `sequences`, `attention_mask` [B, T]; `action_mask` [B, A] marks token
    `T - A + j` of a row as generated (its log-prob is `log_probs[:, -A:][:, j]`). The response
    is the row's marked tokens; `answer_target` finds the brace `p` and y* in it.

    Returns `(index, rows, positions, targets)`: the batch rows that have a feature, and for
    each the (row, position) of its brace token in the decoder's hidden states and its y*.
    Hidden states are [B, T, H], or [1, real tokens, H] when the Actor packs the batch
    (`--ds.packing_samples`: padding removed, rows concatenated).
    """
    if action_mask is None or action_mask.dim() != 2 or action_mask.shape[0] != sequences.shape[0]:
        raise ValueError("MEDS actor features need OpenRLHF's [batch, response] action_mask")
    sequences, action_mask, attention_mask = sequences.cpu(), action_mask.cpu().bool(), attention_mask.cpu().bool()
    offset = sequences.shape[1] - action_mask.shape[1]
    flat = attention_mask.flatten().long().cumsum(0) - 1  # packed index of each real token
    index, rows, positions, targets = [], [], [], []
    for i in range(sequences.shape[0]):
        cols = offset + torch.nonzero(action_mask[i]).flatten()
        if len(cols) and int(cols[-1] - cols[0]) + 1 != len(cols):
            raise ValueError(
                f"MEDS supports single-turn rollouts: row {i}'s action_mask marks {len(cols)} tokens "
                f"between columns {int(cols[0])} and {int(cols[-1])} (observations in between)"
            )
        found = answer_target(sequences[i, cols], tokenizer)
        if found is None:
            continue
        p, y_star = found
        col = int(cols[p])
        if not attention_mask[i, col]:
            raise ValueError(f"row {i}: the answer brace at column {col} is masked out by attention_mask")
        index.append(i)
        rows.append(0 if packed else i)
        positions.append(int(flat[i * sequences.shape[1] + col]) if packed else col)
        targets.append(y_star)
    rows, positions, targets = (torch.tensor(v, dtype=torch.long) for v in (rows, positions, targets))
    return index, rows, positions, targets


@contextlib.contextmanager
def feature_capture(
    actor, tokenizer, config: MedsConfig, sequences, action_mask, attention_mask, ring_attn_group=None
) -> Iterator[Callable[[], np.ndarray]]:
    """Hooks `actor` (an `openrlhf.models.Actor`) for one forward of this micro-batch.

    Yields `finish`: call it after `actor(sequences, action_mask, attention_mask, ...)` has run
    inside the block; it returns the features, float32 [B, feature_width], NaN rows for
    rollouts without an answer (`--meds.layers` etc. as in `response_features`).

    Under DeepSpeed ZeRO-3, `finish` gathers the whole lm_head weight (and, for
    `--meds.logit_lens`, the final norm) once per micro-batch: ZeRO-3 partitions each
    parameter as one flat tensor, so single rows cannot be gathered. It is a collective:
    every rank calls it once per forward (as the ZeRO-3 forward itself), features or not.
    """
    if ring_attn_group is not None:
        raise ValueError("--meds.feature_source actor does not support --ds.ring_attn_size > 1")
    model = hf_model(actor)
    _, layers, norm, lm_head = decoder_parts(model)
    packed = bool(getattr(actor, "packing_samples", False))
    index, rows, positions, targets = answer_positions(tokenizer, sequences, action_mask, attention_mask, packed)
    device = lm_head.weight.device
    rows, positions, targets = rows.to(device), positions.to(device), targets.to(device)
    out = np.full((sequences.shape[0], feature_width(config, len(layers))), np.nan, dtype=np.float32)

    with contextlib.ExitStack() as hooks:
        captured = hooks.enter_context(capture_feature_rows(model, rows, positions, config))

        def finish() -> np.ndarray:
            hooks.close()  # before logits_from_rows: with logit_lens it calls the (hooked) norm
            if not captured:
                raise RuntimeError("MEDS: the policy forward did not run through the hooked decoder layers")
            params = [lm_head.weight, *([lm_head.bias] if getattr(lm_head, "bias", None) is not None else [])]
            if config.logit_lens:
                params += list(norm.parameters())
            with torch.no_grad(), deepspeed.zero.GatheredParameters(params, modifier_rank=None):  # no-op unless ZeRO-3
                features = logits_from_rows(model, captured, targets, config)
            out[index] = features.cpu().numpy()
            return out

        yield finish


@ray.remote(num_gpus=1)
class MedsPolicyModelActor(PolicyModelActor.__ray_metadata__.modified_class):
    """OpenRLHF's policy actor whose log-prob forward also computes the MEDS features.

    Call `meds_setup(config)` on every actor of the group before the first training step
    (before or after `init_model_from_pretrained`: it only stores the config); each `forward`
    then stashes its micro-batch's features and `meds_pop_features` hands them over. With
    `--meds.features semantic` the forward is upstream's alone (the trainer embeds the texts).
    """

    def meds_setup(self, config: dict) -> None:
        self.meds = MedsConfig(**config)
        self.meds_features: list[np.ndarray] = []

    def forward(
        self, sequences, action_mask=None, attention_mask=None, packed_seq_lens=None, mm_train_inputs_list=None
    ):
        if getattr(self, "meds", None) is None:
            raise RuntimeError("MedsPolicyModelActor.forward called before meds_setup()")
        if self.meds.features == "semantic":  # the trainer embeds the texts: no hooks, nothing stashed
            return super().forward(sequences, action_mask, attention_mask, packed_seq_lens, mm_train_inputs_list)
        check_parallelism(self.strategy.args.ds)
        with feature_capture(
            self.actor, self.tokenizer, self.meds, sequences, action_mask, attention_mask, self.strategy.ring_attn_group
        ) as finish:
            action_log_probs = super().forward(
                sequences, action_mask, attention_mask, packed_seq_lens, mm_train_inputs_list
            )
            self.meds_features.append(finish())
        return action_log_probs

    def meds_pop_features(self) -> list[np.ndarray]:
        """The features of every forward since the last call, in call order; clears them."""
        features, self.meds_features = self.meds_features, []
        return features


def actor_features(actor_model_group, samples_list, duplicate_factor: int) -> list[np.ndarray]:
    """The MEDS features of `samples_list` after `make_experience(samples_list)` ran the
    policy forward on it: one float32 [len(samples.sequences), feature_width] array per
    entry (NaN rows: no answer), aligned exactly like its action_log_probs.

    `async_run_method_batch` gives actor `c * duplicate_factor + j` the c-th contiguous chunk
    of `samples_list`, and each actor runs its chunk's forwards in order; so the stashes of
    actors 0, d, 2d, ... chained are `samples_list` in order (as `_flatten_results`). Every
    actor is popped, duplicates included, so nothing stale is left for the next step.
    """
    per_actor = ray.get(actor_model_group.async_run_method(method_name="meds_pop_features"))
    features = list(itertools.chain.from_iterable(per_actor[::duplicate_factor]))
    sizes = [len(f) for f in features]
    wanted = [len(s.sequences) for s in samples_list]
    if sizes != wanted:
        raise RuntimeError(
            f"MEDS: the policy actors computed features for micro-batches of sizes {sizes}, but the "
            f"experience maker has {wanted}: call actor_features once after each make_experience"
        )
    return features


def response_tokens(samples, j: int) -> list[int]:
    """Generated token ids of row j of an OpenRLHF Experience (right-padded sequences whose
    last `action_mask.shape[1]` columns are the response)."""
    actions = samples.sequences[j, -samples.action_mask.shape[1] :]
    return actions[samples.action_mask[j].bool()].tolist()


def semantic_features(maker, samples_list) -> list[np.ndarray]:
    """--meds.features semantic: each rollout's response text embedded by the encoder (loaded
    once, in the experience maker's process), one float32 array per entry of `samples_list`
    as `actor_features` gives (NaN rows: no `\\boxed{` answer)."""
    if getattr(maker, "meds_encoder", None) is None:
        maker.meds_encoder = semantic_encoder(maker.meds)
    responses = [response_tokens(s, j) for s in samples_list for j in range(len(s.sequences))]
    feats = maker.meds_encoder.rollout_features(maker.tokenizer, responses)
    return np.split(feats, np.cumsum([len(s.sequences) for s in samples_list])[:-1])


def submit_actor_features(maker, samples_list) -> None:
    """`MedsExperienceMaker.make_experience` with --meds.feature_source actor: the features were
    read in the log-prob forward that just ran (with --meds.features semantic: the encoder
    embeds the response texts here); submit each prompt group to the memory and tag its
    samples, as the engines do with --meds.feature_source vllm."""
    meds, args = maker.meds, maker.args
    if meds.features == "semantic":
        feats = semantic_features(maker, samples_list)
    else:
        feats = actor_features(
            maker.actor_model_group, samples_list, args.ds.ring_attn_size * args.ds.tensor_parallel_size
        )
    n = args.rollout.n_samples_per_prompt
    groups: dict[int, list[tuple[int, int]]] = {}  # OpenRLHF's group identity: index // n
    for k, samples in enumerate(samples_list):
        for j, index in enumerate(samples.index):
            groups.setdefault(index // n, []).append((k, j))
    acks, gids, div = [], {}, {}
    for g, members in groups.items():
        members.sort(key=lambda kj: samples_list[kj[0]].index[kj[1]])
        k0, j0 = members[0]
        group_feats = np.stack([feats[k][j] for k, j in members])
        correct = np.array([bool(samples_list[k].scores[j] >= 0.5) for k, j in members])
        answers = [final_answer(maker.tokenizer, response_tokens(samples_list[k], j)) for k, j in members]
        if meds.diversity:
            div[g] = diversity_tags(group_feats, answers, correct)
        gids[g] = -1
        if meds.enable:
            key = prompt_key(samples_list[k0].prompts[j0])
            gids[g], ack = maker.memory.submit(key, maker.step, group_feats, correct, answers=answers)
            acks.append(ack)
    ray.get(acks)
    for k, samples in enumerate(samples_list):
        samples.info[GROUP_ID] = torch.tensor([gids[i // n] for i in samples.index])
        samples.info[ROLLOUT] = torch.tensor([i % n for i in samples.index])
        samples.info[HAS_FEATURE] = torch.tensor((~np.isnan(feats[k]).all(axis=1)).astype(np.int64))
        for name in div.get(samples.index[0] // n, {}):
            samples.info[name] = torch.tensor([div[i // n][name] for i in samples.index])
