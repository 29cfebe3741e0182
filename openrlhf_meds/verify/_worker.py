"""One math-verify worker process of `openrlhf_meds.verify`'s pool, started as a script
(`python _worker.py`): it imports only the standard library and math-verify, so it runs
wherever the parent's interpreter does, whatever the parent's import path.

Protocol, JSON lines: the worker writes {"ready": true} (or {"ready": false, "error": ...})
once math-verify is imported; then each line it reads is a list of [prediction, label]
pairs and it answers one line per pair, in order: [verdict, error-or-null]. The parent
enforces the time limits by killing this process: math-verify's own signal-based timeouts
are turned off here (parsing_timeout=None, timeout_seconds=None).
"""

import json
import logging
import os
import signal
import sys
import threading
import time
from functools import lru_cache

MEMORY_MB = int(os.environ.get("OPENRLHF_MEDS_VERIFY_MEMORY_MB", "4096"))


def _exit_with_parent(parent: int) -> None:
    # stdin's EOF ends an idle worker; this ends one that is busy when its parent dies.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _limit_memory() -> None:
    # 9^{9^{9}} and friends can try to allocate gigabytes: make that a MemoryError instead.
    try:
        import resource

        limit = MEMORY_MB * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def main() -> None:
    # Answers go to a private copy of fd 1; anything a library prints lands on stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def send(obj) -> None:
        out.write(json.dumps(obj).encode() + b"\n")
        out.flush()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except Exception as e:  # reported to the parent, which counts it
        send({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings
    _limit_memory()
    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())

    def parse_boxed(text: str):
        # Both sides are wrapped alike: math-verify then applies its \boxed{} normalisation
        # (units, \text{}, \%, ...) to the label as to the answer.
        return parse("\\boxed{" + text + "}", extraction_config=config, parsing_timeout=None)

    parse_label = lru_cache(maxsize=4096)(parse_boxed)  # the n samples of a problem share it

    def verdict(prediction: str, label: str) -> tuple[float, str | None]:
        gold = parse_label(label)
        if not gold:
            return 0.0, "label"
        pred = parse_boxed(prediction)
        return float(bool(verify(gold, pred, timeout_seconds=None))), None

    send({"ready": True})
    for line in sys.stdin.buffer:
        for prediction, label in json.loads(line):
            try:
                v, err = verdict(prediction, label)
            except Exception as e:  # MemoryError, RecursionError, sympy errors
                v, err = 0.0, type(e).__name__
            send([v, err])


if __name__ == "__main__":
    main()
