"""A console progress bar with ETA (rich), shown on host 0 only."""

from __future__ import annotations

import jax
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class Progress:

  def __init__(self, total: int, start: int):
    self.bar = None
    if jax.process_index() != 0:
      return
    self.bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn())
    self.task = self.bar.add_task("train", total=total, completed=start, status="")
    self.bar.start()

  def update(self, step: int, loss: float | None = None, val_ppl: float | None = None) -> None:
    if self.bar is None:
      return
    fields = {}
    if loss is not None:
      fields["status"] = f"loss {float(loss):.3f}" + (f" val_ppl {val_ppl:.2f}" if val_ppl else "")
    self.bar.update(self.task, completed=step, **fields)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.stop()
