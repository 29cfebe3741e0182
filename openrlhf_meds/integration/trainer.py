"""MEDS inside OpenRLHF's trainer: shaped rewards before advantages, metrics, memory checkpoints.

One step, as `openrlhf_meds.train_grpo` wires it:
1. the rollout engines (`openrlhf_meds.integration.rollout_actor`) submit each finished prompt group's
   features and raw verdicts to the MemoryActor and tag its responses with the group id
   (`info["meds_group_id"]`, `info["meds_rollout"]`);
2. `MedsExperienceMaker.compute_advantages_and_returns` fetches the penalties of the batch's
   groups and shapes the rewards (wrong: r - pen, correct: r / (1 + pen)) before OpenRLHF's
   own length penalties and group-normalised advantages; the raw `scores` stay untouched
   (dynamic filtering and logging use them; with `--meds.filter_metric shaped` the filter,
   `shaped_filter.py`, fetched the penalties already and they come with the samples);
3. `MedsPPOTrainer` adds `meds/*` metrics to the step's logs, tells the engines the step
   number, and saves / restores the memory with every checkpoint.

With `--meds.diversity` the engines also tag each group's diversity metrics and the trainer
logs their step means as `div/*`; with `--meds.enable false` that is all it does (no memory,
rewards untouched), so a baseline run reports the same `train/div/*` numbers.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import ray
import torch
from openrlhf.trainer.ppo_trainer import PPOTrainer
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

from ..meds.config import MedsConfig
from ..meds.shaping import shape_rewards
from ..memory.client import MemoryClient
from . import shaped_filter
from .rollout_actor import (
    DIVERSITY,
    GROUP_ID,
    HAS_FEATURE,
    REPREFILLED,
    ROLLOUT,
)

MEMORY_DIR = "meds_memory"  # under --ckpt.path: one snapshot per saved step


def snapshot_dir(ckpt_path: str, global_step: int) -> str:
    return os.path.join(ckpt_path, MEMORY_DIR, f"global_step{global_step}")


def diversity_metrics(experiences) -> dict[str, float]:
    """`div/<name>`: each group's diversity metric, averaged over the step's groups (every
    sample carries its group's value, and groups have n samples each); NaN values, a metric
    undefined for a group, are left out. Pops the tags from `info`."""
    values: dict[str, list] = {}
    for e in experiences:
        for tag in [t for t in e.info if t.startswith(DIVERSITY)]:
            values.setdefault(tag[len(DIVERSITY) :], []).append(e.info.pop(tag).float().cpu().numpy())
    metrics = {}
    for name, parts in values.items():
        v = np.concatenate(parts)
        v = v[~np.isnan(v)]
        metrics[f"div/{name}"] = float(v.mean()) if len(v) else float("nan")
    return metrics


def group_metrics(experiences, n: int) -> dict[str, float]:
    """`groups/*` of a step's batch, after its advantages: `kept` groups (what the dynamic
    filter let through, or every group), `all_wrong` groups by the raw score, and
    `all_wrong_nonzero_adv` rollouts of all-wrong groups whose advantage is not zero (none
    under the raw-score filter; with GRPO, MEDS's penalties give them one)."""
    if any(e.scores is None or e.advantages is None for e in experiences):
        return {}  # no verifier scores (a reward model), or an estimator without advantages
    order = torch.tensor([i for e in experiences for i in e.index]).argsort()
    scores = torch.cat([e.scores.float().reshape(-1) for e in experiences])[order].reshape(-1, n)
    moved = torch.cat([(e.advantages.float() * e.action_mask).abs().amax(-1) for e in experiences])
    all_wrong = (scores < 0.5).all(-1)
    nonzero = (moved[order].reshape(-1, n) > 1e-6)[all_wrong]
    return {
        "groups/kept": float(len(scores)),
        "groups/all_wrong": float(all_wrong.sum()),
        "groups/all_wrong_nonzero_adv": float(nonzero.sum()),
    }


def reprefill_metrics(experiences) -> dict[str, float]:
    """`meds/feature_reprefills`: the fraction of the step's rollouts whose vLLM feature took
    a re-prefill (0 when the engines captured every one in-stream). Pops the tag."""
    flags = [e.info.pop(REPREFILLED).float().cpu().numpy() for e in experiences if REPREFILLED in e.info]
    return {"meds/feature_reprefills": float(np.concatenate(flags).mean())} if flags else {}


class MedsExperienceMaker(RemoteExperienceMaker):
    """OpenRLHF's experience maker with MEDS reward shaping before the advantages."""

    def __init__(self, *args, meds: MedsConfig, memory: MemoryClient | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.meds, self.memory = meds, memory
        self.step = 0  # the training step of the batch being made (set by the trainer)
        self.step_metrics: dict[str, float] = {}

    @torch.no_grad()
    def make_experience(self, samples_list):
        samples_list = super().make_experience(samples_list)
        if self.meds.feature_source == "actor":
            from .actor_features import submit_actor_features

            submit_actor_features(self, samples_list)
        return samples_list

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences):
        self.step_metrics = diversity_metrics(experiences)
        reprefills = reprefill_metrics(experiences)  # popped either way; meds/* only with MEDS on
        if self.meds.enable:
            self.step_metrics.update(reprefills | self.shape_rewards(experiences))
        else:  # the baseline: features for train/div/* only, rewards untouched
            for e in experiences:
                for tag in (GROUP_ID, ROLLOUT, HAS_FEATURE):
                    e.info.pop(tag, None)
        experiences = super().compute_advantages_and_returns(experiences)
        self.step_metrics.update(group_metrics(experiences, self.args.rollout.n_samples_per_prompt))
        return experiences

    def shape_rewards(self, experiences) -> dict:
        """Replace each experience's rewards by the MEDS-shaped ones; return step metrics."""
        t0 = time.perf_counter()
        tags = [
            (e.info.pop(GROUP_ID, None), e.info.pop(ROLLOUT, None), e.info.pop(HAS_FEATURE, None)) for e in experiences
        ]
        if any(g is None for g, _, _ in tags):
            raise RuntimeError(
                "MEDS: some rollouts carry no memory group id: the rollout engines are not the "
                "MEDS ones (openrlhf_meds.integration.rollout_actor); start training with openrlhf_meds.train_grpo"
            )
        gids = [g.long().tolist() for g, _, _ in tags]
        # --meds.filter_metric shaped: the filter fetched these samples' penalties already.
        carried = [
            (e.info.pop(shaped_filter.PENALTY, None), e.info.pop(shaped_filter.CLUSTER_SIZE, None)) for e in experiences
        ]
        rescued = [e.info.pop(shaped_filter.RESCUED, None) for e in experiences]
        wanted = sorted({g for batch, (p, _) in zip(gids, carried) if p is None for g in batch if g >= 0})
        results = dict(zip(wanted, self.memory.fetch(wanted))) if wanted else {}
        fetch_s = time.perf_counter() - t0

        raw, shaped, pens, sizes, verdicts = [], [], [], [], []
        lost_carried = set()  # groups the filter found lost (penalty NaN)
        for e, (_, r, _), batch, (carried_pen, carried_size) in zip(experiences, tags, gids, carried):
            pen = np.zeros(len(batch))
            size = np.zeros(len(batch))
            if carried_pen is not None:
                pen, size = carried_pen.double().cpu().numpy(), carried_size.double().cpu().numpy()
                lost_carried.update(g for g, p in zip(batch, pen) if np.isnan(p))
                pen = np.nan_to_num(pen, nan=0.0)
            for j, (gid, i) in enumerate(zip(batch, r.long().tolist())):
                result = results.get(gid)
                if result is not None:
                    size[j], pen[j] = result[0][i], result[1][i]
            correct = (e.scores >= 0.5).cpu().numpy()
            rewards = e.rewards.float().cpu().numpy()
            new = shape_rewards(rewards, correct, pen)
            e.rewards = torch.as_tensor(new, dtype=torch.float32)
            e.info["meds_penalty"] = torch.as_tensor(pen, dtype=torch.float32)
            raw.append(rewards), shaped.append(new), pens.append(pen), sizes.append(size), verdicts.append(correct)
        raw, shaped, pens, sizes, correct_all = map(np.concatenate, (raw, shaped, pens, sizes, verdicts))
        has_feature = torch.cat([f.float() for _, _, f in tags])
        lost = sum(1 for g in wanted if results[g] is None) + len(lost_carried)
        metrics = {}
        if any(x is not None for x in rescued):
            # The share of the step's rollouts in groups that only the shaped filter kept.
            metrics["meds/filter_rescued_frac"] = float(torch.cat([x.float() for x in rescued]).mean())
        return metrics | {
            "meds/penalty_mean": float(pens.mean()),
            "meds/penalty_mean_penalized": float(pens[pens > 0].mean()) if (pens > 0).any() else 0.0,
            "meds/frac_penalized": float((pens > 0).mean()),
            "meds/frac_penalized_correct": float(((pens > 0) & correct_all).mean()),
            "meds/cluster_size_mean": float(sizes.mean()),
            "meds/no_feature_frac": float(1.0 - has_feature.mean()),
            "meds/raw_reward_mean": float(raw.mean()),
            "meds/shaped_reward_mean": float(shaped.mean()),
            "meds/groups_not_in_memory": float(sum(1 for b in gids for g in b if g < 0) / max(len(raw), 1)),
            "meds/lost_groups": float(lost),
            "meds/fetch_wait_s": fetch_s,
        }


class MedsTrainer:
    """MEDS on an OpenRLHF trainer (shaping, metrics, checkpoints): the methods that
    `MedsPPOTrainer` (sync) and `async_trainer.MedsTrainingActor` share."""

    generator = None  # async: the actor that generates the batches and tags their memory step

    def meds_setup(self, config: dict, memory: MemoryClient | None, generator=None):
        """Called by train_grpo right after construction (before fit). `memory` is None for
        the baseline (--meds.enable false with --meds.diversity); `generator` (async only) the
        MEDS GenerateSamplesActor, which then numbers the steps of the groups it generates."""
        self.meds, self.memory, self.generator = MedsConfig(**config), memory, generator
        self.experience_maker = MedsExperienceMaker(
            self.actor_model_group,
            self.critic_model_group,
            self.reward_model_group,
            self.reference_model_group,
            self.kl_ctl,
            self.strategy,
            self.tokenizer,
            meds=self.meds,
            memory=memory,
        )
        if self.meds.feature_source == "actor":
            ray.get(self.actor_model_group.async_run_method(method_name="meds_setup", config=config))
        else:
            algo = self.args.algo
            filter_range = list(algo.dynamic_filtering_range) if algo.dynamic_filtering_enable else None
            shaped = filter_range is not None and self.meds.enable and self.meds.filter_metric == "shaped"
            # The engines keep the groups the raw-score filter will drop out of the memory; the
            # shaped filter needs every group's penalties, so there they get no range.
            engine_range = None if shaped else filter_range
            ray.get([e.meds_setup.remote(memory, engine_range) for e in self.vllm_engines or []])
            if shaped and self.generator is not None:  # async: the generator actor filters
                ray.get(self.generator.meds_shaped_filter.remote(memory, filter_range))
            elif shaped:
                shaped_filter.install(self.samples_generator, memory, filter_range)

    def _engines_at_step(self, step: int, submit: bool = True):
        self.experience_maker.step = step
        if self.generator is not None:  # async: the generator tags its batches itself
            return
        if self.meds.feature_source == "vllm":
            ray.get([e.meds_set_step.remote(step, submit) for e in self.vllm_engines or []])

    def init_checkpoint_states(self):
        states = super().init_checkpoint_states()
        step = states["global_step"]
        if step > 0 and self.memory is not None:  # resuming: the memory must be the one saved with this checkpoint
            path = snapshot_dir(self.args.ckpt.path, step)
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"MEDS: resuming from global step {step} (--ckpt.load_enable) but its memory "
                    f"snapshot {path} is missing; without it the penalties would silently restart "
                    f"from an empty memory"
                )
            manifest = self.memory.restore(path)
            self.strategy.print(f"MEDS: memory restored from {path} ({manifest['vectors']} vectors)")
        self._engines_at_step(step)
        if self.generator is not None:
            ray.get(self.generator.meds_start.remote(step, self.memory))
        if step == 0 and self.meds.eval_before_training and self.eval_dataloader:
            # fit calls this first; step 0 is a fresh run: validate the base model as fit
            # validates after a step (same generation settings), logged at step 0.
            kwargs = {
                **self.generate_kwargs,
                "temperature": self.args.eval.temperature,
                "n_samples_per_prompt": self.args.eval.n_samples_per_prompt,
            }
            self.evaluate(0, **kwargs)
        return states

    def train_step(self, rollout_samples, global_step: int):
        status, next_step = super().train_step(rollout_samples, global_step)
        self._engines_at_step(next_step)
        status.update(self.experience_maker.step_metrics)
        if self.memory is None:
            return status, next_step
        stats = self.memory.stats(reset=True)
        status.update(
            {
                "meds/memory_vectors": stats["vectors"],
                "meds/memory_keys": stats["keys"],
                "meds/clusters_per_key": stats["clusters_per_key"],
                "meds/noise_frac": stats["noise_frac"],
                "meds/assign_latency_ms": stats["assign_latency_ms_mean"],
                "meds/recluster_ms": stats["recluster_ms_mean"],
                "meds/queue_depth": stats["queue_depth"],
                "meds/rejected_nan_or_inf": stats.get("rejected_nan", 0) + stats.get("rejected_inf", 0),
                "meds/memory_restarts": stats.get("restarts", 0),
                "meds/cluster_answer_agreement": stats.get("cluster_answer_agreement", 0.0),
            }
        )
        # One line per step for plain logs (Slurm, `ray job logs`), where no dashboard is.
        self.strategy.print(
            f"MEDS step {next_step}: {status.get('meds/frac_penalized', 0.0):.0%} of rollouts penalized "
            f"(mean penalty {status.get('meds/penalty_mean', 0.0):.4f}), memory {stats['vectors']} vectors "
            f"under {stats['keys']} (prompt, verdict) keys, {stats['clusters_per_key']:.2f} clusters per key, "
            f"{stats.get('restarts', 0)} shard restarts"
        )
        return status, next_step

    def evaluate(self, global_step, **generate_kwargs):  # sync only: async evaluates in its generator
        self._engines_at_step(global_step, submit=False)  # eval rollouts stay out of the memory
        try:
            return super().evaluate(global_step, **generate_kwargs)
        finally:
            self._engines_at_step(global_step)

    def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None):
        super().save_logs_and_checkpoints(global_step, logs_dict, client_states)
        if self.memory is not None and global_step % self.args.ckpt.save_steps == 0:
            path = snapshot_dir(self.args.ckpt.path, global_step)
            # Async: the generator saved it before its next batch reached the memory (unless
            # there was no next batch); the memory may already hold part of that batch now.
            if self.generator is None or not os.path.isdir(path):
                self.memory.snapshot(path, step=global_step)
            # Keep as many memory snapshots as DeepSpeed keeps checkpoints.
            root = os.path.join(self.args.ckpt.path, MEMORY_DIR)
            saved = sorted(
                (d for d in os.listdir(root) if d.startswith("global_step")), key=lambda d: int(d[len("global_step") :])
            )
            for old in saved[: max(len(saved) - self.args.ckpt.max_num, 0)]:
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
            self.strategy.print(f"MEDS: memory saved to {path}")


@ray.remote
class MedsPPOTrainer(MedsTrainer, PPOTrainer.__ray_metadata__.modified_class):
    """OpenRLHF's PPOTrainer with the MEDS memory: shaping, metrics, checkpoints."""
