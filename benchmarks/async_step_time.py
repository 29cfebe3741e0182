"""Step time of GRPO + MEDS on the demo's task, sync vs `--train.async_enable` (OpenRLHF's
generator samples the next batch while the trainer trains on the current one), from the same
SFT'd tiny model, one run after the other.

    bash scripts/run.sh bench async_step_time [--steps 6] [--work-dir outputs/async_step_time] \\
        [--sft DIR] [train_grpo flags for both runs]

`--sft DIR`: a folder with the `sft_done.json` of an earlier demo or study (e.g.
outputs/demo); without it the demo's SFT runs first (a few minutes) and is reused next time.
Prints, per mode, the mean wall-clock time between the ends of consecutive steps over steps
2..N (from the tensorboard events' wall times, so the same measure in both modes; step 1 holds
vLLM's warm-up), OpenRLHF's `timing/generation`, the run's wall time (start-up included), and
MEDS's penalized fraction (the memory works the same in both modes).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from openrlhf_meds.demo import task as arith  # noqa: E402
from openrlhf_meds.demo.main import PROMPTS, train  # noqa: E402


def mean_after_first(points: dict) -> float:
    kept = [v for step, v in points.items() if step > 1] or list(points.values())
    return sum(kept) / len(kept)


def step_wall_times(tb_dir: str, tag: str = "train/meds/memory_vectors") -> dict[int, float]:
    """{step: seconds since the previous step's end} from the wall times of `tag`'s events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ends = {}
    for run in glob.glob(os.path.join(tb_dir, "*")):
        acc = EventAccumulator(run)
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            ends.update({e.step: e.wall_time for e in acc.Scalars(tag)})
    return {s: ends[s] - ends[s - 1] for s in sorted(ends) if s - 1 in ends}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="outputs/async_step_time")
    ap.add_argument("--steps", type=int, default=6, help="GRPO steps per run (8 prompts x 8 rollouts each)")
    ap.add_argument("--sft", default=None, help="folder holding sft_done.json of an earlier demo or study")
    args, more = ap.parse_known_args(argv)
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    sft_dir = os.path.abspath(args.sft) if args.sft else work
    done = os.path.join(sft_dir, "sft_done.json")
    if not os.path.exists(done):
        if args.sft:
            raise SystemExit(f"error: --sft {args.sft}: no sft_done.json there (run the demo first)")
        from openrlhf_meds.demo.sft import sft_tiny_model

        print("SFT of the demo's tiny model (a few minutes, reused next time)", flush=True)
        task = sft_tiny_model(os.path.join(work, "sft_run"), n_sft=1120)
        json.dump({k: v for k, v in task.items() if k != "timings"}, open(done, "w"))
    task = json.load(open(done))
    task["prompts"] = arith.write_split(os.path.join(work, "split"), PROMPTS, 0)["train"]

    rows = []
    for mode, flags in (("sync", []), ("async", ["--train.async_enable"])):
        out = os.path.join(work, mode)
        shutil.rmtree(out, ignore_errors=True)
        print(f"GRPO + MEDS, {mode}, {args.steps} steps", flush=True)
        start = time.perf_counter()
        scalars = train(task, out, args.steps, True, [*flags, *more], save_steps=-1)
        wall = time.perf_counter() - start
        penalized = scalars["train/meds/frac_penalized"]
        rows.append(
            (
                mode,
                mean_after_first(step_wall_times(os.path.join(out, "tensorboard"))),
                mean_after_first(scalars["train/timing/generation"]),
                wall,
                penalized[max(penalized)],
            )
        )
    lines = [
        f"| mode | s per step, steps 2-{args.steps} | generation (s) | run wall time (s) | penalized, last step |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {m} | {t:.2f} | {g:.2f} | {w:.0f} | {p:.0%} |" for m, t, g, w, p in rows),
        f"async / sync: {rows[1][1] / rows[0][1] - 1:+.1%} per step, {rows[1][3] / rows[0][3] - 1:+.1%} per run",
    ]
    print("\n".join(lines))
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
