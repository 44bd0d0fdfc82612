"""Training metrics: a CSV file (always) and TensorBoard event files (when installed).

``OUT/metrics.csv`` has one row per logging period with the period's mean of every value.
TensorBoard logs go to ``OUT/tensorboard/`` only when the ``tensorboard`` package is installed
(``torch.utils.tensorboard`` needs it); otherwise the CSV is the only log and one line says so.
On resume, rows at or after the resumed iteration are dropped first, and the sums of the
period the checkpoint fell in come back from it (:meth:`MetricsWriter.pending`), so a resumed
run's CSV reads as if it had never stopped.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from hassod._io import atomic_write

FIXED_COLUMNS = [
    "iteration",
    "phase",
    "lr",
    "total_loss",
    "pseudo_weight",
    "teacher_weight",
    "teacher_targets_per_image",
    "grad_norm",
    "seconds_per_iteration",
    "data_seconds",
]


def loss_names(num_stages: int) -> list[str]:
    """Every loss the detector reports, in a stable order."""
    names = ["loss_rpn_cls", "loss_rpn_box"]
    for stage in range(num_stages):
        names += [f"loss_cls_stage{stage}", f"loss_box_stage{stage}", f"loss_level_stage{stage}"]
    return names + ["loss_mask"]


def columns(num_stages: int) -> list[str]:
    losses = loss_names(num_stages)
    return FIXED_COLUMNS + losses + [f"teacher_{name}" for name in losses if name != "loss_mask"]


class MetricsWriter:
    """Averages values over ``period`` iterations and writes them (rank 0 only)."""

    def __init__(self, out_dir, num_stages: int, start_iteration: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.columns = columns(num_stages)
        self.path = Path(out_dir) / "metrics.csv"
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.tensorboard = None
        self.tensorboard_note = ""
        if not enabled:
            return
        self._truncate(start_iteration)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(
                str(Path(out_dir) / "tensorboard"), purge_step=start_iteration
            )
        except ImportError:
            self.tensorboard_note = "tensorboard is not installed: metrics go to metrics.csv only"

    def _truncate(self, start_iteration: int) -> None:
        rows = []
        if self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as handle:
                rows = [
                    row for row in csv.DictReader(handle) if int(row["iteration"]) < start_iteration
                ]

        def write(temporary: Path) -> None:
            with temporary.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        # Through a temporary file: killed half-way, the old rows are still all there.
        atomic_write(self.path, write, parents=True)

    def add(self, values: dict) -> None:
        for key, value in values.items():
            if value is None or isinstance(value, str):
                continue
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def pending(self) -> dict:
        """The sums and counts added since the last write, for a checkpoint: a run resumed
        from it averages its first period over the iterations before the stop too."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def restore(self, pending: dict | None) -> None:
        """Continue the period a checkpoint's :meth:`pending` was taken in."""
        if pending:
            self._sums = {key: float(value) for key, value in pending["sums"].items()}
            self._counts = {key: int(value) for key, value in pending["counts"].items()}

    def write(self, iteration: int, phase: str) -> dict:
        """Write the mean of the values added since the last write; returns them."""
        means = {key: self._sums[key] / self._counts[key] for key in self._sums}
        self._sums, self._counts = {}, {}
        if not self.enabled:
            return means
        row = {"iteration": iteration, "phase": phase}
        row.update({key: _format(value) for key, value in means.items() if key in self.columns})
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self.tensorboard is not None:
            for key, value in means.items():
                if math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, iteration)
            self.tensorboard.flush()
        return means

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _format(value: float) -> str:
    return f"{value:.6g}"
