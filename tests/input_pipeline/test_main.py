"""`python -m input_pipeline`: the bad-input contract end to end."""
import os
import subprocess
import sys

from input_pipeline.__main__ import describe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def test_describe_shows_split_size_classes_and_batch(tfds_dir):
  lines = describe("bit_digits", "train[:800]",
                   "decode|resize(16)|value_range(-1, 1)|onehot(10)",
                   tfds_dir, 4)
  assert lines[0] == "bit_digits: classes 10 (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"
  assert lines[1] == "train[:800]: 800 examples"
  assert "image: float32 (4, 16, 16, 3) in [-1, " in "\n".join(lines)
  assert "_mask: bool (4,)" in "\n".join(lines)


def test_bad_input_prints_one_line_and_exits_nonzero(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "input_pipeline", "--dataset=bit_digits",
       f"--data_dir={tmp_path}", "--pp=decode|inceptoin_crop(224)"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: unknown preprocessing op 'inceptoin_crop'")
  assert "valid ops:" in last and "inception_crop" in last
  assert result.stdout == ""
  assert list(tmp_path.iterdir()) == []  # Failed before preparing anything.
