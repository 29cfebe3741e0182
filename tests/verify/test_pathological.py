"""Pathological answers, scored FROM A THREAD (where math-verify's own signal-based timeouts
cannot work): each returns 0 within a few seconds, counts as a timeout or an error, and the
pool goes on answering afterwards. Answers too long to compare (deep nesting, a 20,000-character
sum) are refused before the pool, whatever the machine's speed."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from openrlhf_meds import verify

TIMEOUT = 2.0
# The limit, plus starting a replacement worker (sympy import) on a loaded 2-core machine.
BOUND = TIMEOUT + 10.0

PATHOLOGICAL = {
    "tower of powers": "9^{9^{9^{9}}}",
    "factorial of factorials": "((9!)!)!",
}
TOO_LONG = {
    "deep nesting": "{" * 3000 + "1" + "}" * 3000,
    "20,000 characters": "1+" * 10_000 + "1",
}


@pytest.fixture(scope="module", autouse=True)
def started_pool():
    verify.warmup()


def _score_in_thread(response: str, label: str) -> tuple[float, float, dict, dict]:
    out = {}

    def run():
        before = verify.stats()
        t = time.perf_counter()
        out["v"] = verify.score(response, label, timeout=TIMEOUT)
        out["dt"] = time.perf_counter() - t
        out["before"], out["after"] = before, verify.stats()

    th = threading.Thread(target=run)
    th.start()
    th.join(60)
    assert not th.is_alive(), "score hung"
    return out["v"], out["dt"], out["before"], out["after"]


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_answer_from_a_thread(name):
    v, dt, before, after = _score_in_thread("\\boxed{" + PATHOLOGICAL[name] + "}", "5")
    assert v == 0.0
    assert dt < BOUND
    failed = (after["timeouts"] - before["timeouts"]) + (after["errors"] - before["errors"])
    assert failed == 1, (name, before, after)


def test_pathological_label_from_a_thread():
    v, dt, before, after = _score_in_thread("\\boxed{5}", "9^{9^{9^{9}}}")
    assert v == 0.0 and dt < BOUND
    assert (after["timeouts"] - before["timeouts"]) + (after["errors"] - before["errors"]) == 1


def test_cheap_bad_inputs_from_a_thread_are_immediate():
    cases = [("\\boxed{" + "{" * 5000 + "1", "1", "no_box"), ("\\boxed{1}", "", "errors")]
    cases += [("\\boxed{" + answer + "}", "5", "errors") for answer in TOO_LONG.values()]
    cases += [("\\boxed{5}", TOO_LONG["20,000 characters"], "errors")]
    for response, label, counter in cases:
        v, dt, before, after = _score_in_thread(response, label)
        assert v == 0.0 and dt < 0.5
        assert after[counter] - before[counter] == 1


def test_answers_up_to_the_length_limit_are_compared():
    padded = "5" + " " * (verify.MAX_ANSWER_CHARS - 1)  # a plain integer: compared in-process
    assert verify.score("\\boxed{" + padded + "}", "5") == 1.0
    before = verify.stats()
    assert verify.score("\\boxed{" + padded + " }", "5") == 0.0
    assert verify.stats()["errors"] - before["errors"] == 1


def test_concurrent_threads_mix_of_hangs_and_answers():
    responses = ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{0.5}", "\\boxed{((9!)!)!}", "\\boxed{\\sqrt{8}}"] * 2
    labels = ["1", "\\frac{1}{2}", "1", "2\\sqrt{2}"] * 2
    before = verify.stats()
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as ex:
        got = list(ex.map(lambda p: verify.score(*p, timeout=TIMEOUT), zip(responses, labels)))
    assert got == [0.0, 1.0, 0.0, 1.0] * 2
    after = verify.stats()
    assert after["timeouts"] - before["timeouts"] + after["errors"] - before["errors"] == 4
    # four hangs of TIMEOUT each on a pool of >= 1 workers, plus replacements
    assert time.perf_counter() - t < 4 * BOUND


def test_score_batch_from_a_thread_times_out_per_item():
    responses = ["\\boxed{1/2}", "\\boxed{9^{9^{9^{9}}}}", "\\boxed{3}", "\\boxed{x = 2}"]
    labels = ["0.5", "1", "3", "2"]
    before = verify.stats()
    with ThreadPoolExecutor(max_workers=1) as ex:
        statuses = []
        got = ex.submit(verify.score_batch, responses, labels, timeout=TIMEOUT, statuses=statuses).result(timeout=60)
    assert got == [1.0, 0.0, 1.0, 1.0]  # the items after the hang are still scored
    assert statuses[0] is None and statuses[2:] == [None, None] and statuses[1] in ("timeout", "error")
    assert verify.stats()["timeouts"] + verify.stats()["errors"] - before["timeouts"] - before["errors"] == 1
    statuses = []
    verify.score_batch(["no box", "\\boxed{1}"], ["1", ""], statuses=statuses)
    assert statuses == ["no_box", "error"]


def test_from_asyncio_to_thread_as_openrlhf_calls_the_reward():
    async def main():
        return await asyncio.to_thread(verify.score, "\\boxed{((9!)!)!}", "1", timeout=TIMEOUT)

    t = time.perf_counter()
    assert asyncio.run(main()) == 0.0
    assert time.perf_counter() - t < BOUND


def test_the_pool_still_answers_afterwards():
    assert verify.score("\\boxed{\\frac{2}{4}}", "0.5") == 1.0
    assert verify.score("\\boxed{\\frac{3}{4}}", "0.5") == 0.0
