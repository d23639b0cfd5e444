"""Metrics to <workdir>/metrics.jsonl (one JSON object per logged step) and TensorBoard event files."""

import json
import os
from collections.abc import Mapping

import numpy as np


class MetricWriter:
    """Appends scalar metrics to metrics.jsonl and to TensorBoard under <workdir>/tensorboard/.

    Only process 0 writes. A run calls `truncate_after(step)` once, before writing, with the step it starts from
    (0 for a fresh run): it drops the lines a run that died logged after its last checkpoint (they are logged
    again as the steps are replayed), and heals the file: a line cut short by a kill during a write is dropped,
    with one note. TensorBoard is told the same step (purge_step), so its views drop the replayed steps too.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.workdir = workdir
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._purge_step: int | None = None

    def truncate_after(self, step: int) -> None:
        """Keeps the lines of steps <= `step` (those whose step has a checkpoint) and drops unreadable ones."""
        self._purge_step = step + 1
        if not self.enabled or not os.path.exists(self.path):
            return
        kept, unreadable, dropped = [], [], 0
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        unterminated = bool(lines) and not lines[-1].endswith("\n")  # the next line would be glued to it
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                logged = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                unreadable.append(number)
                continue
            if logged <= step:
                kept.append(line.rstrip("\n") + "\n")
            else:
                dropped += 1
        if unreadable:
            which = (
                "its last line"
                if unreadable == [len(lines)]
                else f"line(s) {', '.join(map(str, unreadable))}"
            )
            print(
                f"Note: {self.path}: dropped {which}, cut short or not JSON (a run killed while writing it); "
                f"{len(kept)} logged steps kept.",
                flush=True,
            )
        if not unreadable and not dropped and not unterminated:
            return
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._tensorboard()
        for key, value in record.items():
            if key != "step":
                tb.add_scalar(key, value, step)
        tb.flush()

    def _tensorboard(self):
        """The TensorBoard writer, opened on first use; after truncate_after(s) its events from step s + 1 on,
        left by a run that died, are purged."""
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"), purge_step=self._purge_step)
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
