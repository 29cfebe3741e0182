"""The verifier inside a real Ray actor (threaded, as OpenRLHF's rollout actors call the reward):
a hanging answer is cut at its timeout, counted, and the actor's pool keeps answering."""

import time

import pytest

pytestmark = pytest.mark.slow  # starts an in-process Ray cluster: ~10-30 s


@pytest.fixture(scope="module")
def ray_cluster(local_ray):
    ray = pytest.importorskip("ray")
    local_ray(num_cpus=1)
    yield ray
    ray.shutdown()


def test_timeouts_inside_a_threaded_ray_actor(ray_cluster):
    ray = ray_cluster

    @ray.remote(max_concurrency=2)  # methods run on the actor's worker threads, not its main thread
    class Scorer:
        def score(self, response, label, timeout):
            import threading

            from openrlhf_meds import verify

            t = time.perf_counter()
            v = verify.score(response, label, timeout=timeout)
            off_main = threading.current_thread() is not threading.main_thread()
            return v, time.perf_counter() - t, verify.stats(), off_main

    scorer = Scorer.remote()
    v, _, _, off_main = ray.get(scorer.score.remote("\\boxed{\\frac{2}{4}}", "0.5", 5.0), timeout=120)
    assert v == 1.0 and off_main
    v, dt, stats, _ = ray.get(scorer.score.remote("\\boxed{9^{9^{9^{9}}}}", "1", 2.0), timeout=120)
    assert v == 0.0 and dt < 12.0
    assert stats["timeouts"] + stats["errors"] == 1
    v, _, _, _ = ray.get(scorer.score.remote("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 5.0), timeout=120)
    assert v == 1.0
