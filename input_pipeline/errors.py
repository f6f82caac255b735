"""The one exception for bad input: entry points print it and exit nonzero."""

from bit_jax.errors import UserError


class InputError(UserError):
  """Bad dataset, split, preprocessing string or image file.

  The message is always one line that names what was wrong and the valid
  choices, so entry points can print `str(e)` alone and exit nonzero.
  """

  def __init__(self, message: str):
    # Messages often embed library errors; fold them onto one line.
    super().__init__(" ".join(str(message).split()))
