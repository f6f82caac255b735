import pytest

from input_pipeline.errors import InputError


def test_input_error_is_a_one_line_value_error():
  e = InputError("bad thing:\n  details\n\tmore")
  assert isinstance(e, ValueError)
  assert str(e) == "bad thing: details more"


def test_input_error_can_be_raised_and_caught_as_value_error():
  with pytest.raises(ValueError, match="^unknown op 'x'$"):
    raise InputError("unknown op 'x'")
