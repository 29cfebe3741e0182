"""The training data of the official MEDS runs: DAPO-Math-17K + MATH levels 3-5, as prompt/label JSONL.

Sources (each a `.jsonl`, `.json` or `.parquet` file, a directory of them, or a hub dataset name):

- DAPO-Math-17K, in either layout. The original (`BytedTsinghua-SIA/DAPO-Math-17k`): `prompt`
  is a chat list whose user turn wraps the problem in DAPO's "Answer:" instruction text, the
  answer is `reward_model.ground_truth`, and every problem is repeated (about 100 times); the
  repeats are removed by exact problem text, as the processed layout was made. The processed
  layout (`open-r1/DAPO-Math-17k-Processed`): `prompt` is the problem text, `solution` the answer
  (else `reward_model.ground_truth`).
- MATH in the lighteval layout (`DigitalLearningGmbH/MATH-lighteval`): `problem`, `solution`,
  `level` ("Level 3"), `type`. The answer is the solution's last `\\boxed{...}` (braces balanced,
  `openrlhf_meds.verify.extract_boxed`); only the chosen levels are kept. A row whose level
  cannot be read ("Level ?") is kept unless `drop_unknown_level`.

Each output row is `{"prompt": problem text, "label": answer}`: the keys the recipes pass as
`--data.input_key prompt --data.label_key label`. The problem text is plain (DAPO's instruction
wrapper removed) because the recipes put it into their own Qwen-Math chat template with
`--data.input_template`, as the official run puts the problem alone in the user turn.
"""

from __future__ import annotations

import json
import os
import random
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from openrlhf_meds.verify import extract_boxed

EXTENSIONS = (".jsonl", ".json", ".parquet")
MATH_LEVELS = (1, 2, 3, 4, 5)

# DAPO-Math-17K's user turn: "Solve the following math problem step by step. The last line of
# your response should be of the form Answer: $Answer (without quotes) where $Answer is the
# answer to the problem.\n\n<problem>\n\nRemember to put your answer on its own line after "Answer:"."
_DAPO_PREFIX = re.compile(
    r"\A\s*Solve the following math problem step by step\. The last line of your response should be of the "
    r"form Answer: .{0,40}? where \$Answer is the answer to the problem\.\s*",
    re.DOTALL | re.IGNORECASE,
)
_DAPO_SUFFIX = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*\Z", re.IGNORECASE)
_LEVEL = re.compile(r"\A\s*(?:level\s*)?(\d+)\s*\Z", re.IGNORECASE)


class DataError(ValueError):
    """Bad input to `prepare`: the message is one line and names the flag it is about."""


@dataclass
class SourceCounts:
    """What happened to the rows of one source (`--dapo` or `--math`)."""

    flag: str
    where: str
    files: list[str] = field(default_factory=list)
    layout: str = ""
    read: int = 0
    kept: int = 0
    repeats: int = 0  # the original DAPO layout's repeated problems
    dropped_level: int = 0
    unknown_level: int = 0  # kept, or dropped with drop_unknown_level
    dropped_unreadable: int = 0  # no problem text, or no answer (MATH: no closed \boxed{} in the solution)

    def line(self, drop_unknown_level: bool) -> str:
        """The source's counts as `prepare` prints them."""
        parts = [f"read {self.read}", f"kept {self.kept}"]
        if self.layout == "dapo-original":
            parts.append(f"repeats removed {self.repeats}")
        if self.flag == "--math":
            parts.append(f"dropped by level {self.dropped_level}")
            parts.append(f"unknown level {self.unknown_level} ({'dropped' if drop_unknown_level else 'kept'})")
        parts.append(f"dropped unreadable {self.dropped_unreadable}")
        return f"{self.flag} {self.where} [{self.layout}, {len(self.files)} file(s)]: " + ", ".join(parts)


@dataclass
class Prepared:
    """The result of `prepare`: the rows written and every count."""

    rows: list[dict]
    sources: list[SourceCounts]
    duplicates: int = 0  # removed by dedup
    conflicting: int = 0  # of those, how many had another label than the row kept
    shuffled_with: int | None = None


def parse_levels(text: str) -> tuple[int, ...]:
    """`--levels`: "3-5", "3,4,5", "5" or "1-2,5" -> sorted MATH levels; DataError if malformed."""
    levels: set[int] = set()
    bad = DataError(f"--levels: expected MATH levels (1-5) as a range or list such as 3-5 or 3,4,5, got {text!r}")
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise bad
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or lo not in MATH_LEVELS or hi not in MATH_LEVELS:
            raise bad
        levels.update(range(lo, hi + 1))
    return tuple(sorted(levels))


def strip_dapo_instruction(text: str) -> str:
    """The problem inside DAPO-Math-17K's instruction text (text without it comes back stripped)."""
    return _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", text, count=1), count=1).strip()


def normalise_problem(text: str) -> str:
    """The dedup key of a problem: NFKC, whitespace runs as one space, no outer whitespace."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def read_level(value: Any) -> int | None:
    """The MATH level of "Level 3", "3" or 3; None when it cannot be read ("Level ?", None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():  # a parquet integer column with gaps
        return int(value)
    m = _LEVEL.match(value) if isinstance(value, str) else None
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- reading


def _is_path(arg: str) -> bool:
    # A missing file must be reported as missing, not looked up on the hub.
    return os.path.exists(arg) or arg.lower().endswith(EXTENSIONS) or arg.startswith(("/", ".", "~"))


def data_files(arg: str, flag: str) -> list[str]:
    """The data files of a path argument: the file itself, or a directory's `.jsonl`/`.json`/`.parquet`
    files (directly in it, sorted by name; DataError if one is a test split)."""
    path = os.path.expanduser(arg)
    if not os.path.exists(path):
        raise DataError(f"{flag} {arg}: no such file or directory")
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(path, f))
        )
        if not files:
            raise DataError(f"{flag} {arg}: a directory without .jsonl, .json or .parquet files")
        # A hub snapshot keeps train-* and test-* files side by side; MATH500 is part of MATH's
        # test split, so reading a whole such folder would train on the evaluation set.
        tests = [os.path.basename(f) for f in files if os.path.basename(f).lower().startswith("test")]
        if tests:
            names = ", ".join(tests)
            raise DataError(f"{flag} {arg}: the directory holds test-split files ({names}); give the train file")
        return files
    if not path.lower().endswith(EXTENSIONS):
        raise DataError(f"{flag} {arg}: not a .jsonl, .json or .parquet file")
    return [path]


def read_rows(path: str, flag: str) -> list[dict]:
    """The rows of one data file as plain Python dicts (parquet lists as lists)."""
    if path.lower().endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{flag} {path}: reading parquet needs pyarrow (pip install pyarrow)") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise DataError(f"{flag} {path}: not a readable parquet file ({type(e).__name__})") from None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON lines under a .json name, as `datasets` accepts
        if isinstance(data, list):
            return _objects(data, path, flag)
        if data is not None:
            raise DataError(f"{flag} {path}: a .json file must hold a list of objects or JSON lines")
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{flag} {path}:{i}: not a JSON line ({e.msg})") from None
    return _objects(rows, path, flag)


def _objects(rows: list, path: str, flag: str) -> list[dict]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{flag} {path}: row {i} is a {type(row).__name__}, not an object")
    return rows


def load_source(arg: str, flag: str) -> Iterator[tuple[str, list[dict]]]:
    """(file or hub name, rows) for each part of a source argument. A name that is not a path is
    a hub dataset, `NAME` or `NAME:CONFIG`, loaded with `datasets.load_dataset(..., split="train")`."""
    if _is_path(arg):
        for path in data_files(arg, flag):
            yield path, read_rows(path, flag)
        return
    import datasets

    name, _, config = arg.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # the hub's errors are many; the flag and the name matter here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{flag} {arg}: not a file, and loading it as a hub dataset failed ({first})") from None
    yield arg, ds.to_list()


# ---------------------------------------------------------------- layouts


def _has_ground_truth(row: dict) -> bool:
    return isinstance(row.get("reward_model"), dict) and "ground_truth" in row["reward_model"]


def dapo_layout(row: dict) -> str | None:
    """The DAPO layout of a row: dapo-original, dapo-processed, or None for neither."""
    prompt = row.get("prompt")
    if isinstance(prompt, list) and _has_ground_truth(row):
        return "dapo-original"
    if isinstance(prompt, str) and ("solution" in row or _has_ground_truth(row)):
        return "dapo-processed"
    return None


def _user_text(messages: list) -> str | None:
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _dapo_example(row: dict, layout: str) -> tuple[str, str]:
    if layout == "dapo-original":
        problem, answer = _user_text(row["prompt"]) or "", row["reward_model"]["ground_truth"]
    else:
        problem = row["prompt"]
        answer = row["solution"] if "solution" in row else row["reward_model"]["ground_truth"]
    return strip_dapo_instruction(problem), _text(answer)


MATH_FIELDS = ("problem", "solution", "level")


def _fields(row: dict) -> str:
    return ", ".join(sorted(map(str, row))) or "none"


def _progress(rows: list, desc: str, progress: bool):
    if not progress:
        return rows
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in a log file.
    return tqdm(rows, desc=desc, unit=" rows", disable=None, leave=False, mininterval=0.5)


def read_dapo(arg: str, progress: bool = True) -> tuple[list[tuple[str, str]], SourceCounts]:
    """(problem, answer) pairs of DAPO-Math-17K in either layout, and their counts."""
    counts = SourceCounts("--dapo", arg)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for where, rows in load_source(arg, "--dapo"):
        counts.files.append(where)
        if not rows:
            continue
        layout = dapo_layout(rows[0])
        if layout is None:
            raise DataError(
                f"--dapo {where}: neither DAPO-Math-17K layout (original: prompt as chat messages + "
                f"reward_model.ground_truth; processed: prompt text + solution); fields found: {_fields(rows[0])}"
            )
        if counts.layout and counts.layout != layout:
            raise DataError(f"--dapo {arg}: files in both layouts ({counts.layout} and {layout}); give one layout")
        counts.layout = layout
        for i, row in enumerate(_progress(rows, f"--dapo {os.path.basename(where)}", progress)):
            if dapo_layout(row) != layout:
                raise DataError(f"--dapo {where}: row {i} is not in the {layout} layout; fields found: {_fields(row)}")
            counts.read += 1
            problem, answer = _dapo_example(row, layout)
            if not problem or not answer:
                counts.dropped_unreadable += 1
                continue
            if layout == "dapo-original":
                if problem in seen:
                    counts.repeats += 1
                    continue
                seen.add(problem)
            out.append((problem, answer))
    counts.kept = len(out)
    return out, counts


def read_math(
    arg: str, levels: Iterable[int], drop_unknown_level: bool = False, progress: bool = True
) -> tuple[list[tuple[str, str]], SourceCounts]:
    """(problem, answer) pairs of MATH (lighteval layout) at the given levels, and their counts."""
    levels = set(levels)
    counts = SourceCounts("--math", arg, layout="math-lighteval")
    out: list[tuple[str, str]] = []
    for where, rows in load_source(arg, "--math"):
        counts.files.append(where)
        for i, row in enumerate(_progress(rows, f"--math {os.path.basename(where)}", progress)):
            if any(f not in row for f in MATH_FIELDS):
                what = f"row {i} is not" if i else "not"
                raise DataError(
                    f"--math {where}: {what} in the MATH lighteval layout (problem, solution, level); "
                    f"fields found: {_fields(row)}"
                )
            counts.read += 1
            level = read_level(row["level"])
            if level is None:
                counts.unknown_level += 1
                if drop_unknown_level:
                    continue
            elif level not in levels:
                counts.dropped_level += 1
                continue
            problem, answer = _text(row["problem"]), _text(extract_boxed(row["solution"]))
            if not problem or not answer:
                counts.dropped_unreadable += 1
                continue
            out.append((problem, answer))
    counts.kept = len(out)
    return out, counts


# ---------------------------------------------------------------- the whole step


def prepare(
    dapo: str | None = None,
    math: str | None = None,
    levels: Iterable[int] = (3, 4, 5),
    dedup: bool = False,
    seed: int | None = None,
    drop_unknown_level: bool = False,
    out: str | None = None,
    progress: bool = True,
) -> Prepared:
    """Read the sources, keep DAPO then MATH rows in source order, optionally deduplicate (by
    `normalise_problem`, the first row kept) and shuffle (`random.Random(seed)`), and write
    `out` as JSONL (atomically) if given. DataError for bad input or an empty result."""
    if dapo is None and math is None:
        raise DataError("give --dapo PATH_OR_NAME and/or --math PATH_OR_NAME")
    pairs: list[tuple[str, str]] = []
    sources: list[SourceCounts] = []
    if dapo is not None:
        rows, counts = read_dapo(dapo, progress)
        pairs += rows
        sources.append(counts)
    if math is not None:
        rows, counts = read_math(math, levels, drop_unknown_level, progress)
        pairs += rows
        sources.append(counts)
    result = Prepared(rows=[], sources=sources, shuffled_with=seed)
    if dedup:
        first: dict[str, str] = {}
        kept = []
        for problem, answer in pairs:
            key = normalise_problem(problem)
            if key in first:
                result.duplicates += 1
                result.conflicting += first[key] != answer
                continue
            first[key] = answer
            kept.append((problem, answer))
        pairs = kept
    if not pairs:
        read = ", ".join(f"{s.flag} read {s.read} kept {s.kept}" for s in sources)
        raise DataError(f"no rows to write ({read}); check the sources, --levels and --drop-unknown-level")
    if seed is not None:
        random.Random(seed).shuffle(pairs)
    result.rows = [{"prompt": p, "label": a} for p, a in pairs]
    if out is not None:
        write_jsonl(result.rows, out)
    return result


def write_jsonl(rows: list[dict], path: str) -> None:
    """Write rows as JSON lines (UTF-8, not escaped), through a temporary file renamed into place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def summary(result: Prepared, out: str | None, drop_unknown_level: bool = False, dedup: bool = False) -> list[str]:
    """The lines `python -m openrlhf_meds.data prepare` prints."""
    lines = [s.line(drop_unknown_level) for s in result.sources]
    if dedup:
        lines.append(
            f"duplicates removed {result.duplicates} ({result.conflicting} with another label than the row kept)"
        )
    order = "source order" if result.shuffled_with is None else f"shuffled with seed {result.shuffled_with}"
    lines.append(f"wrote {len(result.rows)} rows ({order}) to {out}")
    return lines
