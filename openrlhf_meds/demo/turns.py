"""Training runs on one machine that take turns step by step, for fair timing comparisons.

Two runs timed one after the other on a shared machine differ by whatever else the machine
did meanwhile: on the project's 2-core box, by several percent either way. Run side by side,
each doing one whole step (generation, experience, training, weight sync, logs) while the
others wait, they meet the same conditions within seconds of each other, so the difference
of their step times is the difference of their work. The order is reversed every round
(0 1, 1 0, 0 1, ... for two runs) so that neither run always follows the other: what a step
leaves running behind it (a log flush, a warm-up) lands on both runs alike. The CPU demo
runs MEDS on and off so (`openrlhf_meds.demo`).

`python -m openrlhf_meds.demo.turns FLAGS` is `python -m openrlhf_meds.train_grpo FLAGS` whose
sync trainer is `TurnTakingTrainer`: with `OPENRLHF_MEDS_TURNS=<dir>:<index>:<count>` it is run
`index` of `count` (MEDS's sync trainer only: `train_grpo` refuses MEDS off, where OpenRLHF's
trainer runs, and `--train.async_enable`).
`<dir>` holds the shared state, written only by the run whose turn it is: `turn` (the number
of the turn under way; turns of finished runs are skipped), `ready.<i>` (run i is about to
start its first step), `done.<i>` (run i will take no more turns; also written by a
supervisor for a run that died, so the others go on).
"""

from __future__ import annotations

import os
import sys
import time

TURNS_ENV = "OPENRLHF_MEDS_TURNS"
POLL_S = 0.05  # a waiting run looks this often (a few microseconds of work each)


class Turns:
    """Run `index` of `count` runs that share the directory `root` (see the module docstring)."""

    def __init__(self, root: str, index: int, count: int):
        if not 0 <= index < count:
            raise ValueError(f"{TURNS_ENV}: run index {index} is not in [0, {count})")
        self.root, self.index, self.count = root, index, count

    @classmethod
    def from_env(cls) -> Turns | None:
        """The turns `OPENRLHF_MEDS_TURNS` asks for, or None when it is unset."""
        spec = os.environ.get(TURNS_ENV)
        if not spec:
            return None
        root, index, count = spec.rsplit(":", 2)
        return cls(root, int(index), int(count))

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _done(self, i: int) -> bool:
        return os.path.exists(self._path(f"done.{i}"))

    def taken(self) -> int:
        """Turns taken so far, by all runs."""
        try:
            with open(self._path("turn")) as f:
                return int(f.read() or 0)
        except FileNotFoundError:
            return 0

    def owner(self, turn: int) -> int:
        """The run of turn number `turn`: rounds of `count` turns, every other one reversed."""
        round_, k = divmod(turn, self.count)
        return k if round_ % 2 == 0 else self.count - 1 - k

    def _next(self, turn: int) -> int:
        """The first turn from `turn` on whose run has not finished (`turn` if all have)."""
        for t in range(turn, turn + 2 * self.count):
            if not self._done(self.owner(t)):
                return t
        return turn

    def start(self) -> None:
        """Say this run is ready, then wait for its first turn (every run ready)."""
        os.makedirs(self.root, exist_ok=True)
        open(self._path(f"ready.{self.index}"), "w").close()
        self.wait()

    def wait(self) -> None:
        """Block until it is this run's turn. A finished (or dead) run's turn passes on."""
        while True:
            ready = all(os.path.exists(self._path(f"ready.{i}")) or self._done(i) for i in range(self.count))
            if ready and self.owner(self._next(self.taken())) == self.index:
                return
            time.sleep(POLL_S)

    def hand_over(self) -> None:
        """End this run's turn: the next run that has not finished goes."""
        self._write(self._next(self._next(self.taken()) + 1))

    def finish(self) -> None:
        """This run takes no more turns; hand over if it holds one."""
        held = self._next(self.taken())
        open(self._path(f"done.{self.index}"), "w").close()
        if self.owner(held) == self.index:
            self._write(self._next(held + 1))

    def _write(self, turn: int) -> None:
        tmp = self._path(f"turn.{self.index}.tmp")
        with open(tmp, "w") as f:
            f.write(str(turn))
        os.replace(tmp, self._path("turn"))  # atomic: a reader sees the old count or the new


def _turn_taking_trainer():
    import ray

    from ..integration.trainer import MedsPPOTrainer

    class TurnTakingTrainer(MedsPPOTrainer.__ray_metadata__.modified_class):
        """MEDS's sync trainer taking turns under $OPENRLHF_MEDS_TURNS: a turn is a whole step,
        handed over once it is timed and logged (`save_logs_and_checkpoints`), before any
        evaluation (which thus runs in the run's own turn, untimed)."""

        turns: Turns | None = None

        def fit(self, global_step: int = 0) -> None:
            self.turns = Turns.from_env()
            if self.turns is None:
                return super().fit(global_step)
            self.turns.start()
            try:
                return super().fit(global_step)
            finally:
                self.turns.finish()

        def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None):
            super().save_logs_and_checkpoints(global_step, logs_dict, client_states)
            if self.turns is not None:  # the step is timed and logged: the next run's turn
                self.turns.hand_over()
                self.turns.wait()

    return ray.remote(TurnTakingTrainer)


def main(argv: list[str] | None = None):
    """`train_grpo` with the turn-taking sync trainer (see the module docstring)."""
    from ..train_grpo import main as train_grpo

    # the class is made once OpenRLHF can be imported (under CPU mode's patches with --cpu)
    return train_grpo(list(sys.argv[1:] if argv is None else argv), sync_trainer=_turn_taking_trainer)


if __name__ == "__main__":
    main()
