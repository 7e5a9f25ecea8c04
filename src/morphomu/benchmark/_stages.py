"""The stage runner both benchmark tasks share: progress, timings, and partial results when a stage fails."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ._report import write_results

__all__ = ["Stage", "results_on_failure", "run_stages"]


class Stage:
    """Prints a stage's start and end with its duration, and records the duration and the stages done.

    Use one instance for a whole run, as ``with stage("train"): ...``.

    Parameters
    ----------
    timings
        Stage name to seconds, filled as stages finish (the run's ``results["timings_s"]``).
    log
        Where progress lines go.
    """

    def __init__(self, timings: dict[str, float], log: Callable[[str], None]) -> None:
        self.timings, self.log = timings, log
        self.current: str | None = None  # the stage running (or the one that failed)
        self.done: list[str] = []

    def __call__(self, name: str) -> Stage:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.log(f"[morphomu benchmark] {self.name} ...")
        self.current = self.name
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.t0, 1)
        if exc[0] is None:
            self.log(f"[morphomu benchmark] {self.name}: {self.timings[self.name]:.1f} s")
            self.done.append(self.name)
            self.current = None

    def failure(self) -> str:
        """The ``status`` of a run that fails now."""
        if self.current is not None:
            return f"failed at {self.current}"
        return f"failed after {self.done[-1]}" if self.done else "failed before the first stage"


@contextlib.contextmanager
def results_on_failure(out: Path, results: dict, stage: Stage) -> Iterator[None]:
    """On failure, write ``results.json`` with what is finished and ``status`` naming the failed stage.

    Nothing is written when no stage had started (the run failed checking its input), so the caller can
    tell a run that computed something from one that did not.
    """
    try:
        yield
    except BaseException as exc:
        if stage.current is None and not stage.done:
            raise
        results.update(status=stage.failure(), error=f"{type(exc).__name__}: {exc}", stages_done=stage.done)
        try:
            write_results(out, results)
        except Exception as e:
            stage.log(f"[morphomu benchmark] could not write results.json: {e}")
        raise


def run_stages(
    out: Path, results: dict, *, stages: Callable[[Stage], dict], log: Callable[[str], None] = print
) -> dict:
    """Run a benchmark's ``stages`` into the directory ``out``, keeping what they finish if one fails.

    Parameters
    ----------
    out
        The run's output directory (it exists).
    results
        What the run reports, filled stage by stage; its ``"timings_s"`` dict receives each stage's seconds.
    stages
        The run itself: called with the :class:`Stage` to wrap each stage in; returns the final results.
    log
        Where progress lines go.

    Returns
    -------
    What ``stages`` returns. If it raises after a stage has started, ``results.json`` is written with the
    stages done, ``"status": "failed at <stage>"`` and the error, and the error is raised again.
    """
    stage = Stage(results["timings_s"], log)
    with results_on_failure(out, results, stage):
        return stages(stage)
