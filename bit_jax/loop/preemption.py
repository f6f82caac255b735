"""SIGTERM and SIGINT end a run at a step boundary, after a checkpoint, instead of mid-step.

    flag = preemption.PreemptionFlag()   # installs the handlers
    ... if flag: save, then raise errors.Preempted() ...
    flag.restore()                       # puts the previous handlers back

`bit_jax.loop.run` does this for every training loop.
"""

from __future__ import annotations

import signal

from absl import logging


class PreemptionFlag:
  """True once SIGTERM or SIGINT (Ctrl-C) arrived; the loop then saves and exits instead of
  dying mid-step. A second Ctrl-C interrupts at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name = None
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def restore(self):
    for s, previous in self._previous.items():
      signal.signal(s, previous)

  def _handle(self, signum, frame):
    del frame
    if self.signal_name == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = self.signal_name or signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint after this step, then exiting.",
                    signal.Signals(signum).name)

  def __bool__(self):
    return self.signal_name is not None
