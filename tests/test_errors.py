"""An exception as one line."""
from bit_jax import errors


def test_one_line_is_the_type_and_the_first_line_without_tensorstores_dump():
  assert errors.one_line(OSError("\n  [Errno 28] No space left  \nTraceback ...")) == (
      "OSError: [Errno 28] No space left")
  assert errors.one_line(ValueError(
      "Encountered error while reading. See full TensorStore details: {'driver': ...}")) == (
          "ValueError: Encountered error while reading.")
  assert errors.one_line(RuntimeError("x" * 300), limit=5) == "RuntimeError: xxxxx..."
  assert errors.one_line(KeyError()) == "KeyError: "
