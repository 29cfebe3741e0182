"""Evaluation problems: the paper's five benchmarks by name, or the user's own JSONL/parquet.

A name (`aime24`, `amc23`, `math500`, `minerva`, `olympiadbench`) is read from
`<data_dir>/<name>.jsonl` in the schema of the project's shared files (`id`, `problem`,
`answer`, optional `solution`), or, without a data dir, from its public hub dataset
(`HUB`, needs hub access). Anything else is a path to a `.jsonl`/`.json`/`.parquet` file whose
problem and answer fields are `problem_key` / `answer_key`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

BENCHMARKS = ("aime24", "amc23", "math500", "minerva", "olympiadbench")
# name -> (hub dataset, split, problem field, answer field)
HUB = {
    "aime24": ("HuggingFaceH4/aime_2024", "train", "problem", "answer"),
    "amc23": ("math-ai/amc23", "test", "question", "answer"),
    "math500": ("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
    "minerva": ("math-ai/minervamath", "test", "question", "answer"),
    "olympiadbench": ("math-ai/olympiadbench", "test", "question", "final_answer"),
}
# Prompt templates (`{}` is the problem; literal braces doubled, as str.format reads them).
# qwen-math is the template the recipes train with (examples/scripts/common_qwen2.5_math_7b.sh):
# the official run's messages (system, user, an empty assistant turn) as Qwen2.5's chat
# template renders them with a generation prompt.
TEMPLATES = {
    "qwen-math": "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n",
    "raw": "{}",
}


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    solution: str | None = None


def _read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such data file: {path}")
    if path.endswith(".parquet"):
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    if path.endswith(".json"):
        rows = json.load(open(path))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a .json data file must hold a list of objects")
        return rows
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON line ({e.msg})") from None
    return rows


def _answer_text(value) -> str:
    if hasattr(value, "tolist") and not isinstance(value, str):  # parquet lists come back as arrays
        value = value.tolist()
    if isinstance(value, (list, tuple)):  # several final answers (OlympiadBench)
        return ", ".join(str(v) for v in value)
    return str(value)


def _problems(rows: list[dict], where: str, problem_key: str, answer_key: str, id_key: str = "id") -> list[Problem]:
    out, seen = [], set()
    for i, row in enumerate(rows):
        for key in (problem_key, answer_key):
            if key not in row:
                raise ValueError(
                    f"{where}: row {i} has no {key!r} field (fields: {sorted(row)}); see --problem-key/--answer-key"
                )
        pid = str(row.get(id_key, i))
        if pid in seen:
            raise ValueError(f"{where}: duplicate problem id {pid!r}")
        seen.add(pid)
        solution = row.get("solution")
        out.append(Problem(pid, str(row[problem_key]), _answer_text(row[answer_key]), solution and str(solution)))
    if not out:
        raise ValueError(f"{where}: no problems")
    return out


def load_problems(
    name_or_path: str,
    data_dir: str | None = None,
    problem_key: str = "problem",
    answer_key: str = "answer",
    limit: int | None = None,
) -> list[Problem]:
    """The problems of one evaluation set (see the module docstring); the first `limit` if given."""
    if name_or_path in BENCHMARKS and data_dir:
        problems = _problems(
            _read_rows(os.path.join(data_dir, f"{name_or_path}.jsonl")), name_or_path, "problem", "answer"
        )
    elif name_or_path in BENCHMARKS:
        import datasets

        repo, split, pkey, akey = HUB[name_or_path]
        rows = [dict(r) for r in datasets.load_dataset(repo, split=split)]
        problems = _problems(rows, f"{repo} ({name_or_path})", pkey, akey)
    else:
        problems = _problems(_read_rows(name_or_path), name_or_path, problem_key, answer_key)
    return problems[:limit] if limit else problems


def dataset_name(name_or_path: str) -> str:
    """The name results are reported under: the benchmark name, or the file's stem."""
    if name_or_path in BENCHMARKS:
        return name_or_path
    return os.path.splitext(os.path.basename(name_or_path))[0]


def render(template: str, problem: str) -> str:
    """The prompt for a problem: `template` is a TEMPLATES name or a str.format string with one `{}`."""
    return TEMPLATES.get(template, template).format(problem)
