"""`--meds.filter_metric shaped`: OpenRLHF's dynamic filtering on the MEDS-shaped rewards.

OpenRLHF 0.11.2 filters in `SamplesGenerator._generate_vllm`, as each prompt group comes back
from the engines: a group whose mean raw score is outside `--algo.dynamic_filtering_range` is
dropped and one new prompt is dispatched in its place. By default (`--meds.filter_metric raw`,
the official run) the MEDS engines know that range and keep those groups out of the memory, so
the memory and the penalties see only the kept groups, as in the official code.

A filter on the shaped rewards needs the penalties first, so with `shaped`:
- the engines submit every training group to the memory (the trainer gives them no range);
- `install` wraps the generator's `_generate_vllm`: it asks OpenRLHF's own for the prompts with
  its filter off, fetches the penalties of the groups that came back, keeps the groups whose
  shaped rewards are not all equal (`filter_keeps`), and asks for one new prompt per dropped
  group, in rounds, until a round drops nothing or the prompts run out (OpenRLHF refills prompt
  by prompt; the official code refills by whole generation batches);
- a memory hands out a group's penalties once, so the fetched ones travel with the kept samples
  (`info`) and the trainer shapes with exactly them (`MedsExperienceMaker.shape_rewards`).
The shaped reward the filter sees is the one the trainer computes: MEDS's shaping of the
reward function's reward, before OpenRLHF's length penalties.
"""

from __future__ import annotations

import numpy as np
import torch

from ..meds.shaping import filter_keeps, shape_rewards
from .rollout_actor import GROUP_ID, ROLLOUT

# Per-sample tags the filter adds (popped by the trainer): the penalty and cluster size it
# fetched (penalty NaN: the group was lost in a memory crash), and 1 on the samples of a group
# the raw-score filter would have dropped.
PENALTY, CLUSTER_SIZE, RESCUED = "meds_filter_penalty", "meds_filter_cluster_size", "meds_filter_rescued"


def prompt_groups(experiences) -> list[tuple[int, list]]:
    """(memory group id, its single-sample experiences) for each prompt group, in order:
    OpenRLHF's `_generate_vllm` returns a prompt's samples one after another."""
    groups: list[tuple[int, list]] = []
    for e in experiences:
        gid = int(e.info[GROUP_ID][0])
        if gid < 0:
            raise RuntimeError(
                "MEDS: a training group did not reach the memory, but --meds.filter_metric shaped "
                "needs every group's penalties (are the engines the MEDS ones?)"
            )
        if groups and groups[-1][0] == gid:
            groups[-1][1].append(e)
        else:
            groups.append((gid, [e]))
    return groups


def decide(groups, memory, filter_range) -> list[bool]:
    """Whether the shaped filter keeps each (group id, experiences) group; tags the samples
    with the penalties it fetched from `memory` and whether the raw filter would have dropped
    their group."""
    results = memory.fetch([gid for gid, _ in groups]) if groups else []
    keep = []
    for (_, members), result in zip(groups, results):
        rollouts = [int(e.info[ROLLOUT][0]) for e in members]
        if result is None:  # lost in a memory crash: no penalties (the trainer counts it)
            sizes, pens, tagged = np.zeros(len(members)), np.zeros(len(members)), np.full(len(members), np.nan)
        else:
            sizes, pens = np.asarray(result[0])[rollouts], np.asarray(result[1])[rollouts]
            tagged = pens
        scores = [float(e.scores[0]) for e in members]
        rewards = np.array([float(e.rewards[0]) for e in members])
        shaped = shape_rewards(rewards, np.array(scores) >= 0.5, pens)
        kept = filter_keeps(scores, shaped, "shaped")
        rescued = kept and not filter_keeps(scores, shaped, "raw", filter_range)
        for e, size, pen in zip(members, sizes, tagged):
            e.info[PENALTY] = torch.tensor([pen], dtype=torch.float64)
            e.info[CLUSTER_SIZE] = torch.tensor([size], dtype=torch.float64)
            e.info[RESCUED] = torch.tensor([int(rescued)])
        keep.append(kept)
    return keep


def install(samples_generator, memory, filter_range) -> None:
    """Make `samples_generator` (OpenRLHF's SamplesGenerator) filter training batches on the
    shaped rewards. `memory`: the MemoryClient the engines submit to; `filter_range`:
    `--algo.dynamic_filtering_range`, used only to tag the groups the raw filter would drop."""
    generate = samples_generator._generate_vllm

    def generate_vllm(dataloader_iter, num_prompts, dynamic_filtering, **kwargs):
        if not dynamic_filtering:  # evaluation
            return generate(dataloader_iter, num_prompts, dynamic_filtering, **kwargs)
        kept, consumed, want = [], 0, num_prompts
        while True:
            experiences, used, exhausted = generate(dataloader_iter, want, False, **kwargs)
            consumed += used
            groups = prompt_groups(experiences)
            keep = decide(groups, memory, filter_range)
            for (_, members), k in zip(groups, keep):
                if k:
                    kept.extend(members)
            want = len(groups) - sum(keep)
            if exhausted or want == 0:
                return kept, consumed, exhausted

    samples_generator._generate_vllm = generate_vllm
