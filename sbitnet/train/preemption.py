"""Stop requests from the cluster: SIGTERM (preemption, `scontrol requeue`) or SIGUSR1 (a time
limit ahead). The host loop checkpoints at the next step every process agrees on, then exits, so
a requeued or resubmitted job resumes without repeating work."""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
  """Context manager that records the first stop signal instead of dying on it.

  Handlers are installed only in the main thread (Python's rule) and restored on exit.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for sig in STOP_SIGNALS:
        self._previous[sig] = signal.signal(sig, self._record)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _record(self, signum: int, frame) -> None:
    del frame
    if self.signum is None:
      self.signum = signum

  def agreed(self) -> bool:
    """Whether any process got a stop signal; a collective when there are several processes, so
    call it at the same step on every process. A process that got none takes on the signal of
    one that did (the largest number), so every process exits the same way."""
    if jax.process_count() == 1:
      return self.signum is not None
    signums = multihost_utils.process_allgather(np.asarray(self.signum or 0, np.int32))
    agreed = int(np.max(signums))
    if agreed and self.signum is None:
      self.signum = agreed
    return agreed != 0

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum is not None else "a stop request"
