"""The arithmetic demo task: deterministic data, the verifier, and the reward file as OpenRLHF
0.11.2 loads and calls it."""

import asyncio
import json

import pytest
import torch

from openrlhf_meds.demo import task as arith


def test_dataset_is_a_function_of_the_seed():
    assert arith.make_dataset(3, 50) == arith.make_dataset(3, 50)
    assert arith.make_dataset(3, 50) != arith.make_dataset(4, 50)


def digits_of(prompt: str) -> list[int]:
    question = prompt.split("Which is the largest of ")[1].split("?")[0]
    return [int(d) for d in question.replace(" and ", ", ").split(", ")]


def test_rows_are_correct_maxima_in_the_prompt_format():
    for row in arith.make_dataset(0, 200):
        digits = digits_of(row["prompt"])
        assert len(digits) == 3 and len(set(digits)) == 3 and all(0 <= d <= 9 for d in digits)
        assert row["label"] == str(max(digits))
        assert row["solution"] == f"max({', '.join(map(str, digits))}) = \\boxed{{{max(digits)}}}"
        assert row["prompt"].startswith("<|im_start|>user\n") and row["prompt"].endswith("<|im_start|>assistant\n")


def test_every_answer_is_its_own_first_answer_token():
    """The task's premise for MEDS: y*, the first token after the final `\\boxed{`, is the
    whole answer, a different token for each answer."""
    from openrlhf_meds.demo.toy import build_qwen_tokenizer
    from openrlhf_meds.meds.answer import answer_target

    tok = build_qwen_tokenizer()
    assert arith.answer_space() == [str(d) for d in range(2, 10)]
    y_stars = {}
    for _, answer, solution in (arith.make_problem(p) for p in arith.problems()[::37]):
        ids = tok.encode(solution + arith.EOS, add_special_tokens=False)
        p, y = answer_target(ids, tok)
        assert tok.decode([y]) == str(answer) and ids[p + 2] == tok.encode("}", add_special_tokens=False)[0]
        y_stars.setdefault(answer, set()).add(y)
    assert all(len(ys) == 1 for ys in y_stars.values()) and len({min(ys) for ys in y_stars.values()}) == len(y_stars)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="n >= 1"):
        arith.make_dataset(0, 0)


def test_write_task_files(tmp_path):
    paths = arith.write_task(str(tmp_path), seed=1, n_sft=5, n_rl=7)
    sft = [json.loads(line) for line in open(paths["sft"])]
    rl = [json.loads(line) for line in open(paths["prompts"])]
    assert len(sft) == 5 and len(rl) == 7
    assert all(row["response"].endswith("}" + arith.EOS) for row in sft)
    assert set(rl[0]) == {"prompt", "label"}
    assert paths["reward"] == arith.REWARD_FILE
    # RL prompts come from another seed stream than the SFT data
    assert [r["prompt"] for r in rl[:5]] != [r["prompt"] for r in sft]


@pytest.mark.parametrize(
    "response,label,expected",
    [
        ("3 + 4 = \\boxed{7}<|endoftext|>", "7", 1.0),
        ("3 + 4 = \\boxed{ 7 }", "7", 1.0),
        ("3 + 4 = \\boxed{8}", "7", 0.0),
        ("\\boxed{6} no, \\boxed{7}", "7", 1.0),  # the last box counts
        ("3 + 4 = 7", "7", 0.0),  # no box
        ("\\boxed{7", "7", 0.0),  # unclosed
        ("\\boxed{\\frac{14}{2}}", "7", 1.0),  # equal as numbers (math-verify)
        ("\\boxed{7.5}", "7", 0.0),
    ],
)
def test_score(response, label, expected):
    assert arith.score(response, label) == expected


def test_last_boxed_handles_nested_braces():
    assert arith.last_boxed("x \\boxed{a{b}c} y") == "a{b}c"


def test_reward_ignores_the_boxed_in_the_prompt():
    prompt = arith.format_prompt("What is 2 + 2?")
    assert "\\boxed{}" in prompt
    out = arith.reward_func([prompt + "2 + 2 = 4"], [prompt], ["4"])
    assert out["scores"].item() == 0.0 and out["extra_logs"]["boxed"].item() == 0.0


@pytest.mark.slow  # imports openrlhf (and DeepSpeed): ~10-30 s
def test_reward_file_through_openrlhf_executor():
    """Loaded and called exactly as OpenRLHF 0.11.2's SingleTurnAgentExecutor does, then wrapped
    as its samples generator does (torch.tensor([value]))."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    executor = SingleTurnAgentExecutor(remote_rm_url=[arith.REWARD_FILE])
    prompt = arith.format_prompt("What is 12 + 30?")
    queries = [prompt + "12 + 30 = \\boxed{42}<|endoftext|>", prompt + "12 + 30 = \\boxed{41}", prompt + "42"]
    results = asyncio.run(executor._fetch_rewards_via_func(queries, [prompt] * 3, ["42"] * 3))
    scores = [torch.tensor([r["scores"]]) for r in results]
    rewards = [torch.tensor([r["rewards"]]) for r in results]
    assert [s.shape for s in scores] == [torch.Size([1])] * 3
    assert torch.cat(scores).tolist() == [1.0, 0.0, 0.0]
    assert torch.cat(rewards).tolist() == [1.0, 0.0, 0.0]
    assert [r["extra_logs"]["boxed"].item() for r in results] == [1.0, 1.0, 0.0]


def test_write_split_gives_distinct_train_and_heldout_problems(tmp_path):
    paths = arith.write_split(str(tmp_path), 16, 32)
    rows = {name: [json.loads(line) for line in open(path)] for name, path in paths.items()}
    ids = {name: [r["id"] for r in rs] for name, rs in rows.items()}
    assert len(ids["train"]) == 16 and len(ids["heldout"]) == 32
    assert len(set(ids["train"] + ids["heldout"])) == 48  # distinct, and none held out is trained on
    for r in rows["train"] + rows["heldout"]:
        digits = [int(d) for d in r["id"].split(",")]
        assert r["label"] == r["answer"] == str(max(digits)) and r["prompt"] == r["problem"]
        assert digits_of(r["prompt"]) == digits
    assert arith.write_split(str(tmp_path / "again"), 16, 32)  # a function of the seed:
    assert open(paths["heldout"]).read() == open(tmp_path / "again" / "heldout.jsonl").read()
    with pytest.raises(ValueError, match="distinct problems"):
        arith.write_split(str(tmp_path), 700, 21)
