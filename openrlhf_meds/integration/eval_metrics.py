"""Training-time evaluation with the unbiased pass@k: stands in for OpenRLHF's
`compute_eval_metrics` (which reports only the mean, `pass1`, and the max over n, `passN`) and
adds, per dataset, `eval_<ds>_pass@<k>` for k = 1, 2, 4, ... up to n and `eval_<ds>_mean@<n>`.
They come from the raw verifier scores (never shaped rewards), so a `--meds.enable false`
baseline and a MEDS run report the same numbers."""

from __future__ import annotations

from collections import defaultdict

from ..eval.passk import mean_at_n, mean_pass_at_k, powers_of_two_up_to


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = powers_of_two_up_to(n)
    return ks if ks[-1] == n else [*ks, n]


def pass_at_k_logs(eval_dataloader, samples_list, n_samples_per_prompt: int) -> dict[str, float]:
    """{eval_<ds>_pass@<k>, eval_<ds>_mean@<n>} from OpenRLHF's eval samples (one per rollout,
    a prompt's n rollouts consecutive, as OpenRLHF's own metrics read them)."""
    n = n_samples_per_prompt
    datasource = {}
    for datasources, prompts, _labels, _images in eval_dataloader:
        datasource.update(zip(prompts, datasources))
    prompts, scores = [], []
    for s in samples_list:
        prompts.extend(s.prompts)
        raw = s.scores if s.scores is not None else s.rewards  # the verifier's raw score
        scores.extend(float(x) for x in raw.flatten())
    correct = defaultdict(list)  # dataset -> correct count per prompt
    for i in range(len(prompts) // n):
        group = scores[i * n : (i + 1) * n]
        correct[datasource.get(prompts[i * n], "unknown")].append(sum(x >= 0.5 for x in group))
    logs = {}
    for ds, counts in correct.items():
        for k in ks_up_to(n):
            logs[f"eval_{ds}_pass@{k}"] = mean_pass_at_k([n] * len(counts), counts, k)
        logs[f"eval_{ds}_mean@{n}"] = mean_at_n(counts, n)
    return logs


def with_pass_at_k(compute_eval_metrics):
    """OpenRLHF's `compute_eval_metrics` with `pass_at_k_logs` added to what it returns."""

    def compute(eval_dataloader, samples_list, n_samples_per_prompt):
        logs = compute_eval_metrics(eval_dataloader, samples_list, n_samples_per_prompt)
        if samples_list:
            logs.update(pass_at_k_logs(eval_dataloader, samples_list, n_samples_per_prompt))
        return logs

    return compute
