"""The exceptions entry points end a run with: bad user input, and a diverged run.

Entry points catch `UserError` and `NonFiniteLossError`, print the one-line message and exit
nonzero; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """Bad input from the user; the message is one line naming what is wrong and what is valid."""


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is left as it was."""
