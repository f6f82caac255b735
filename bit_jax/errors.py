"""The one exception type for bad user input (configs, files, names).

Entry points catch `UserError`, print its one-line message and exit nonzero; anything else
is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """Bad input from the user; the message is one line naming what is wrong and what is valid."""
