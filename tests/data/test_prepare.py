"""`python -m openrlhf_meds.data prepare` on small files of every layout, written here (jsonl,
json, parquet): the exact rows and counts, and each refused input."""

import json
import os
import random
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openrlhf_meds.data import DataError, normalise_problem, parse_levels, prepare, strip_dapo_instruction
from openrlhf_meds.data.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# DAPO-Math-17K's user turn around a problem, as the original layout stores it.
DAPO_HEAD = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_TAIL = '\n\nRemember to put your answer on its own line after "Answer:".'


def dapo_original(problem, answer, index):
    return {
        "data_source": "math_dapo",
        "prompt": [{"content": DAPO_HEAD + problem + DAPO_TAIL, "role": "user"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": index},
    }


def dapo_processed(problem, answer):
    return {"prompt": problem, "solution": answer, "data_source": "math_dapo"}


def math_row(problem, solution, level, kind="Algebra"):
    return {"problem": problem, "solution": solution, "level": level, "type": kind}


# Three problems, the original layout's repeats included (each problem several times).
DAPO_PROBLEMS = [
    ("Find $x$ if $2x = 6$.", "3"),
    ("How many primes are below $10$?", "4"),
    ("Compute $\\frac{1}{2} + \\frac{1}{3}$.", "\\frac{5}{6}"),
]
ORIGINAL = [dapo_original(p, a, f"id{i}") for _ in range(3) for i, (p, a) in enumerate(DAPO_PROBLEMS)]

MATH = [
    math_row("What is $1+1$?", "Clearly $1+1=\\boxed{2}$.", "Level 1"),
    math_row("What is $\\frac{2}{4}$?", "It is $\\boxed{\\frac{1}{2}}$.", "Level 3"),
    math_row("Solve $y^2 = 9$, $y > 0$.", "First $\\boxed{-3}$ is out, so $\\boxed{3}$.", "Level 4"),
    math_row("Area of a unit square?", "The area is $\\boxed{1}$.", "Level ?", "Geometry"),
    math_row("No box here?", "The answer is 7.", "Level 5"),
    math_row("Unclosed box?", "The answer is $\\boxed{7$.", "Level 5"),
    math_row("Find $k$ with $k^2=k$, $k>0$.", "So $k = \\boxed{1}$.", "Level 5"),
    math_row("Sum $2+2$?", "$\\boxed{4}$", "Level 2"),
]
MATH_KEPT = [
    {"prompt": "What is $\\frac{2}{4}$?", "label": "\\frac{1}{2}"},
    {"prompt": "Solve $y^2 = 9$, $y > 0$.", "label": "3"},
    {"prompt": "Area of a unit square?", "label": "1"},
    {"prompt": "Find $k$ with $k^2=k$, $k>0$.", "label": "1"},
]
DAPO_KEPT = [{"prompt": p, "label": a} for p, a in DAPO_PROBLEMS]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def read_out(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def run(argv, capsys):
    code = main(["prepare", "--no-progress", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_strip_dapo_instruction():
    assert strip_dapo_instruction(DAPO_HEAD + "Find $x$.\n" + DAPO_TAIL) == "Find $x$."
    # The same wrapper with DAPO's \boxed{} variant of the answer line.
    boxed_head = DAPO_HEAD.replace("Answer: $Answer (without quotes)", "Answer: \\boxed{$Answer}")
    assert strip_dapo_instruction(boxed_head + "Find $y$." + DAPO_TAIL) == "Find $y$."
    assert strip_dapo_instruction("  Find $z$, then solve the following.  ") == "Find $z$, then solve the following."


def test_dapo_original_jsonl_and_math_jsonl(tmp_path, capsys):
    dapo = write_jsonl(tmp_path / "dapo.jsonl", ORIGINAL)
    math = write_jsonl(tmp_path / "math.jsonl", MATH)
    out = tmp_path / "out" / "train.jsonl"
    code, stdout, err = run(["--dapo", dapo, "--math", math, "--levels", "3-5", "--out", str(out)], capsys)
    assert (code, err) == (0, "")
    assert read_out(out) == DAPO_KEPT + MATH_KEPT
    assert stdout.splitlines() == [
        f"--dapo {dapo} [dapo-original, 1 file(s)]: read 9, kept 3, repeats removed 6, dropped unreadable 0",
        f"--math {math} [math-lighteval, 1 file(s)]: read 8, kept 4, dropped by level 2, unknown level 1 (kept), "
        "dropped unreadable 2",
        f"wrote 7 rows (source order) to {out}",
    ]


def test_output_keys_are_the_recipes_input_and_label_keys(tmp_path):
    recipe = open(os.path.join(REPO, "examples/scripts/common_qwen2.5_math_7b.sh")).read()
    keys = re.search(r"--data\.input_key (\w+) --data\.label_key (\w+)", recipe).groups()
    result = prepare(math=write_jsonl(tmp_path / "m.jsonl", MATH), progress=False)
    assert tuple(result.rows[0]) == keys == ("prompt", "label")
    # The recipes wrap the plain problem in their own chat template.
    assert '--data.input_template "$TEMPLATE"' in recipe
    assert "user\\n{}<|im_end|>" in re.search(r"^TEMPLATE=\$'(.*)'$", recipe, re.M).group(1)


def test_parquet_layouts_match_jsonl(tmp_path):
    original = prepare(dapo=write_parquet(tmp_path / "o.parquet", ORIGINAL), progress=False)
    assert original.rows == DAPO_KEPT
    assert (original.sources[0].layout, original.sources[0].repeats) == ("dapo-original", 6)
    processed_rows = [dapo_processed(p, a) for p, a in DAPO_PROBLEMS]
    processed = prepare(dapo=write_parquet(tmp_path / "p.parquet", processed_rows), progress=False)
    assert processed.rows == DAPO_KEPT
    assert (processed.sources[0].layout, processed.sources[0].read, processed.sources[0].repeats) == (
        "dapo-processed",
        3,
        0,
    )
    math = prepare(math=write_parquet(tmp_path / "m.parquet", MATH), progress=False)
    assert math.rows == MATH_KEPT


def test_processed_layout_keeps_its_rows_and_strips_a_wrapper(tmp_path):
    rows = [
        dapo_processed("Find $x$ if $2x = 6$.", "3"),
        dapo_processed(DAPO_HEAD + "What is $3^2$?" + DAPO_TAIL, "9"),
        dapo_processed("Find $x$ if $2x = 6$.", "3"),  # the processed layout's own rows are not merged
        {"prompt": "Only a ground truth.", "reward_model": {"ground_truth": "5"}},
        dapo_processed("No answer.", ""),
    ]
    result = prepare(dapo=write_jsonl(tmp_path / "p.jsonl", rows), progress=False)
    assert result.rows == [
        {"prompt": "Find $x$ if $2x = 6$.", "label": "3"},
        {"prompt": "What is $3^2$?", "label": "9"},
        {"prompt": "Find $x$ if $2x = 6$.", "label": "3"},
        {"prompt": "Only a ground truth.", "label": "5"},
    ]
    counts = result.sources[0]
    assert (counts.read, counts.kept, counts.dropped_unreadable) == (5, 4, 1)


def test_dapo_rows_without_answer_and_mixed_layouts(tmp_path, capsys):
    rows = [dapo_original("Kept.", "1", "a"), dapo_original("No answer.", "", "b"), dapo_original("", "2", "c")]
    result = prepare(dapo=write_jsonl(tmp_path / "o.jsonl", rows), progress=False)
    assert result.rows == [{"prompt": "Kept.", "label": "1"}]
    assert (result.sources[0].read, result.sources[0].dropped_unreadable) == (3, 2)
    out = str(tmp_path / "out.jsonl")
    mixed = write_jsonl(tmp_path / "m.jsonl", [rows[0], dapo_processed("p", "1")])
    assert run(["--dapo", mixed, "--out", out], capsys)[2] == (
        f"error: --dapo {mixed}: row 1 is not in the dapo-original layout; "
        "fields found: data_source, prompt, solution\n"
    )
    folder = tmp_path / "both"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows[:1])
    write_jsonl(folder / "b.jsonl", [dapo_processed("p", "1")])
    assert run(["--dapo", str(folder), "--out", out], capsys)[2] == (
        f"error: --dapo {folder}: files in both layouts (dapo-original and dapo-processed); give one layout\n"
    )


def test_directory_and_json_list(tmp_path):
    folder = tmp_path / "math"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", MATH[4:])
    (folder / "a.json").write_text(json.dumps(MATH[:4]))
    (folder / "README.md").write_text("not data")
    (folder / "sub").mkdir()
    write_jsonl(folder / "sub" / "c.jsonl", MATH)  # subfolders are not read
    result = prepare(math=str(folder), progress=False)
    assert result.rows == MATH_KEPT
    assert result.sources[0].files == [str(folder / "a.json"), str(folder / "b.jsonl")]
    assert result.sources[0].read == 8


def test_levels_and_unknown_levels(tmp_path):
    math = write_jsonl(tmp_path / "m.jsonl", MATH)
    dropped = prepare(math=math, drop_unknown_level=True, progress=False)
    assert dropped.rows == [MATH_KEPT[0], MATH_KEPT[1], MATH_KEPT[3]]
    assert (dropped.sources[0].unknown_level, dropped.sources[0].kept) == (1, 3)
    low = prepare(math=math, levels=parse_levels("1-2"), progress=False)
    assert low.rows == [
        {"prompt": "What is $1+1$?", "label": "2"},
        {"prompt": "Area of a unit square?", "label": "1"},
        {"prompt": "Sum $2+2$?", "label": "4"},
    ]
    assert (low.sources[0].dropped_level, low.sources[0].dropped_unreadable) == (5, 0)
    assert parse_levels("3-5") == parse_levels("5,3,4") == parse_levels(" 3 - 4 , 5") == (3, 4, 5)
    assert parse_levels("1-2,5") == (1, 2, 5)
    # Levels as numbers, and spelled in another case, are read too.
    numeric = [
        math_row("Int level.", "$\\boxed{1}$", 4),
        math_row("Float level.", "$\\boxed{2}$", 5.0),
        math_row("Lower case.", "$\\boxed{3}$", "level 5"),
        math_row("Level 6 is no MATH level.", "$\\boxed{4}$", "Level 6"),
        math_row("No level.", "$\\boxed{5}$", None),
    ]
    result = prepare(math=write_jsonl(tmp_path / "n.jsonl", numeric), progress=False)
    assert [r["label"] for r in result.rows] == ["1", "2", "3", "5"]
    assert (result.sources[0].dropped_level, result.sources[0].unknown_level) == (1, 1)


def test_dedup_by_normalised_problem(tmp_path, capsys):
    dapo = write_jsonl(tmp_path / "d.jsonl", [dapo_processed(p, a) for p, a in DAPO_PROBLEMS])
    math = write_jsonl(
        tmp_path / "m.jsonl",
        [
            math_row("Find  $x$ if\n$2x = 6$. ", "$\\boxed{3}$", "Level 3"),  # a DAPO problem, other spacing
            math_row("How many primes are below $10$?", "$\\boxed{four}$", "Level 4"),  # another label
            math_row("Find $X$ if $2X = 6$.", "$\\boxed{3}$", "Level 5"),  # case differs: another problem
        ],
    )
    out = tmp_path / "o.jsonl"
    code, stdout, _ = run(["--dapo", dapo, "--math", math, "--dedup", "--out", str(out)], capsys)
    assert code == 0
    assert read_out(out) == DAPO_KEPT + [{"prompt": "Find $X$ if $2X = 6$.", "label": "3"}]
    assert "duplicates removed 2 (1 with another label than the row kept)" in stdout.splitlines()
    assert normalise_problem(" a\u00a0 b\n\tc ") == "a b c"
    without = prepare(dapo=dapo, math=math, progress=False)
    assert (len(without.rows), without.duplicates) == (6, 0)


def test_seed_shuffles_deterministically(tmp_path, capsys):
    dapo = write_jsonl(tmp_path / "d.jsonl", ORIGINAL)
    math = write_jsonl(tmp_path / "m.jsonl", MATH)
    ordered = prepare(dapo=dapo, math=math, progress=False).rows
    expected = list(ordered)
    random.Random(7).shuffle(expected)
    assert prepare(dapo=dapo, math=math, seed=7, progress=False).rows == expected
    assert expected != ordered
    out = tmp_path / "o.jsonl"
    code, stdout, _ = run(["--dapo", dapo, "--math", math, "--seed", "7", "--out", str(out)], capsys)
    assert code == 0 and read_out(out) == expected
    assert stdout.splitlines()[-1] == f"wrote 7 rows (shuffled with seed 7) to {out}"


@pytest.mark.parametrize("levels", ["6", "0-3", "5-3", "three", "3-", "", "3,,4"])
def test_bad_levels(tmp_path, capsys, levels):
    math = write_jsonl(tmp_path / "m.jsonl", MATH)
    code, stdout, err = run(["--math", math, "--levels", levels, "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and stdout == ""
    assert err == (
        f"error: --levels: expected MATH levels (1-5) as a range or list such as 3-5 or 3,4,5, got {levels!r}\n"
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_inputs(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    missing = str(tmp_path / "nope.parquet")
    assert run(["--dapo", missing, "--out", out], capsys) == (
        2,
        "",
        f"error: --dapo {missing}: no such file or directory\n",
    )
    # A relative name with a data extension is a missing file, not a hub dataset.
    assert (
        run(["--math", "math.jsonl", "--out", out], capsys)[2]
        == "error: --math math.jsonl: no such file or directory\n"
    )
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert run(["--math", str(empty), "--out", out], capsys)[2] == (
        f"error: --math {empty}: a directory without .jsonl, .json or .parquet files\n"
    )
    assert run(["--out", out], capsys)[2] == "error: give --dapo PATH_OR_NAME and/or --math PATH_OR_NAME\n"
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    write_parquet(snapshot / "train-00000-of-00001.parquet", MATH)
    write_parquet(snapshot / "test-00000-of-00001.parquet", MATH)
    assert run(["--math", str(snapshot), "--out", out], capsys)[2] == (
        f"error: --math {snapshot}: the directory holds test-split files (test-00000-of-00001.parquet); "
        "give the train file\n"
    )
    train = str(snapshot / "train-00000-of-00001.parquet")
    assert prepare(math=train, progress=False).rows == MATH_KEPT
    assert not os.path.exists(out)


def test_files_in_neither_layout_name_the_fields(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": "1"}])
    code, _, err = run(["--dapo", other, "--out", out], capsys)
    assert code == 2
    assert err == (
        f"error: --dapo {other}: neither DAPO-Math-17K layout (original: prompt as chat messages + "
        "reward_model.ground_truth; processed: prompt text + solution); fields found: answer, question\n"
    )
    assert run(["--math", other, "--out", out], capsys)[2] == (
        f"error: --math {other}: not in the MATH lighteval layout (problem, solution, level); "
        "fields found: answer, question\n"
    )
    # MATH given as --dapo: problem/solution are not DAPO's fields.
    math = write_parquet(tmp_path / "math.parquet", MATH)
    assert "fields found: level, problem, solution, type" in run(["--dapo", math, "--out", out], capsys)[2]
    # A later row that leaves the layout is named by its number.
    mixed = write_jsonl(tmp_path / "mixed.jsonl", MATH[:2] + [{"problem": "p"}])
    assert run(["--math", mixed, "--out", out], capsys)[2] == (
        f"error: --math {mixed}: row 2 is not in the MATH lighteval layout (problem, solution, level); "
        "fields found: problem\n"
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(MATH[0]) + "\n{not json\n")
    assert run(["--math", str(broken), "--out", out], capsys)[2].startswith(
        f"error: --math {broken}:2: not a JSON line"
    )
    assert not os.path.exists(out)


def test_an_empty_result_is_refused(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    math = write_jsonl(tmp_path / "m.jsonl", [MATH[0], MATH[7]])  # levels 1 and 2 only
    code, stdout, err = run(["--math", math, "--levels", "3-5", "--out", out], capsys)
    assert (code, stdout) == (2, "")
    assert err == (
        "error: no rows to write (--math read 2 kept 0); check the sources, --levels and --drop-unknown-level\n"
    )
    assert not os.path.exists(out)
    with pytest.raises(DataError, match="no rows to write"):
        prepare(math=write_jsonl(tmp_path / "empty.jsonl", []), progress=False)


def test_module_entry_point(tmp_path):
    math = write_jsonl(tmp_path / "m.jsonl", MATH)
    out = tmp_path / "o.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "openrlhf_meds.data", "prepare", "--math", math, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert read_out(out) == MATH_KEPT
    assert done.stdout.splitlines()[-1] == f"wrote 4 rows (source order) to {out}"
    bad = subprocess.run(
        [sys.executable, "-m", "openrlhf_meds.data", "prepare", "--math", math, "--levels", "9", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--levels" in bad.stderr
