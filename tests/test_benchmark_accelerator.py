"""benchmarks/accelerator.py: its FLOP count, its RESULTS table, and a tiny run on CPU."""
import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from bit_jax import losses, models, optim
from bit_jax import train_step as train_step_lib
from configs import bit_s

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator.py")


def _load():
  spec = importlib.util.spec_from_file_location("benchmarks_accelerator", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


accelerator = _load()


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["flops"]


# (image size, kernel size, stride, padding, kernel dilation): padding that the windows
# overlap partly, strides whose input gradient dilates the cotangent, a dilated kernel.
CONVS = [(9, 3, 1, "VALID", 1), (9, 3, 1, ((1, 1), (1, 1)), 1), (32, 7, 2, ((3, 3), (3, 3)), 1),
         (8, 3, 2, ((1, 1), (1, 1)), 1), (8, 1, 2, "VALID", 1), (10, 3, 1, "SAME", 2)]


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", CONVS)
def test_matmul_flops_count_convolutions_and_their_gradients_as_xla_does(
    size, kernel, stride, padding, dilation):
  x = jnp.ones((2, size, size, 5))
  k = jnp.ones((kernel, kernel, 5, 7))
  conv = lambda x, k: lax.conv_general_dilated(
      x, k, (stride, stride), padding, rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  g = jnp.ones(jax.eval_shape(conv, x, k).shape)
  # The two gradients alone (a vjp's program also holds the forward pass).
  input_grad = lambda k, g: jax.linear_transpose(lambda x: conv(x, k), x)(g)
  kernel_grad = lambda x, g: jax.linear_transpose(lambda k: conv(x, k), k)(g)
  forward = accelerator.matmul_flops(jax.make_jaxpr(conv)(x, k))
  # Integers of a few 10^5: XLA's float count is exact.
  assert forward == _xla_flops(conv, x, k) > 0
  for grad, args in ((input_grad, (k, g)), (kernel_grad, (x, g))):
    counted = accelerator.matmul_flops(jax.make_jaxpr(grad)(*args))
    assert counted == _xla_flops(grad, *args)
    # Each multiply-add of the forward pass is one in each gradient: the strided and padded
    # gradients' dilated inputs and windows must not add or drop any.
    assert counted == forward


def test_matmul_flops_count_matrix_products_scan_lengths_and_the_larger_cond_branch():
  a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
  assert accelerator.matmul_flops(jax.make_jaxpr(jnp.matmul)(a, b)) == 2 * 3 * 4 * 5
  scanned = lambda a, b: lax.scan(lambda c, _: (c, c @ b), a, None, length=6)[1]
  assert accelerator.matmul_flops(jax.make_jaxpr(scanned)(a, b)) == 6 * 2 * 3 * 4 * 5
  branches = lambda p, a, b: lax.cond(p, lambda: (a @ b) @ b.T, lambda: a @ jnp.eye(4))
  # The first branch: a @ b (2*3*4*5), then @ b.T (2*3*5*4); the second only 2*3*4*4.
  assert accelerator.matmul_flops(jax.make_jaxpr(branches)(True, a, b)) == 2 * 120


def test_train_step_count_is_three_passes_less_the_images_gradient():
  config = bit_s.get_config("model=tiny-R14")
  model = models.get_model("tiny-R14", config.num_classes, kernels="plain")
  schedule = optim.make_schedule(config, 1000, 90_000)
  optimizer = optim.make_optimizer(config, schedule)
  images = jnp.ones((4, 32, 32, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1]))["params"]
  state = jax.eval_shape(lambda: train_step_lib.create_train_state(params, optimizer))
  batch = {"image": images, "label": jnp.ones((4, config.num_classes))}
  step = train_step_lib.make_train_step(model, optimizer, losses.get_loss(config.loss),
                                        schedule)
  train = accelerator.matmul_flops(jax.make_jaxpr(step)(state, batch))
  forward = accelerator.matmul_flops(jax.make_jaxpr(
      lambda p, x: model.apply({"params": p}, x))(params, images))
  root = params["root_conv"]["kernel"]
  root_conv = accelerator.matmul_flops(jax.make_jaxpr(
      lambda x, k: lax.conv_general_dilated(x, k, (2, 2), ((3, 3), (3, 3)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")))(
          images, jnp.ones(root.shape)))
  # Every conv and the head: forward, input gradient, weight gradient; the images take none.
  assert train == 3 * forward - root_conv
  assert 0 < root_conv < forward


def _table(text):
  lines = text.splitlines()
  start = lines.index(accelerator.HEADING)
  table = [line for line in lines[start:] if line.startswith("|")]
  # Cells split at each | that is not escaped.
  return [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in table]


def test_append_row_makes_the_heading_and_table_then_appends(tmp_path):
  path = tmp_path / "RESULTS.md"
  row = [str(i) for i in range(len(accelerator.COLUMNS))]
  accelerator.append_row(str(path), row)
  assert _table(path.read_text()) == [list(accelerator.COLUMNS),
                                      ["---"] * len(accelerator.COLUMNS), row]
  accelerator.append_row(str(path), [c + "b" for c in row])
  assert _table(path.read_text())[2:] == [row, [c + "b" for c in row]]


def test_append_row_keeps_the_other_sections_and_the_rows_there(tmp_path):
  path = tmp_path / "RESULTS.md"
  header = "| " + " | ".join(accelerator.COLUMNS) + " |"
  before = (f"# Results\n\n{accelerator.HEADING}\n\nText.\n\n{header}\n|---|\n| old |\n\n"
            "## Memory\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
  path.write_text(before)
  row = ["x|y"] + ["1"] * (len(accelerator.COLUMNS) - 1)
  accelerator.append_row(str(path), row)
  new_line = "| x\\|y | " + " | ".join(row[1:]) + " |"  # A | inside a cell is escaped.
  assert path.read_text() == before.replace("| old |\n", f"| old |\n{new_line}\n")


def test_append_row_starts_a_table_where_the_section_has_none_or_other_columns(tmp_path):
  path = tmp_path / "RESULTS.md"
  row = ["1"] * len(accelerator.COLUMNS)
  path.write_text(f"{accelerator.HEADING}\n\nText.\n\n## Memory\n\n| a |\n|---|\n| 1 |\n")
  accelerator.append_row(str(path), row)
  text = path.read_text()
  assert text.index("Text.") < text.index("| date |") < text.index("## Memory")
  assert text.endswith("## Memory\n\n| a |\n|---|\n| 1 |\n")
  path.write_text(f"{accelerator.HEADING}\n\n| old | columns |\n|---|---|\n| 1 | 2 |\n")
  accelerator.append_row(str(path), row)
  assert path.read_text().startswith(
      f"{accelerator.HEADING}\n\n| old | columns |\n|---|---|\n| 1 | 2 |\n\n| date |")
  assert _table(path.read_text())[-1] == row


@pytest.mark.parametrize("flag", ["--batches=0", "--batches=2,x", "--batches=2,2",
                                  "--resolution=16", "--resolution=big", "--model=R7",
                                  "--dtype=float16", "--windows=0", "--budget_s=-1"])
def test_bad_flags_end_with_one_error_line(flag, capsys):
  with pytest.raises(SystemExit) as exit_info:
    accelerator.main([flag])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err


def _number(cell):
  return float(cell.replace(",", "").rstrip("%"))


def test_tiny_run_on_cpu_appends_one_dated_row_per_run(tmp_path):
  path = tmp_path / "RESULTS.md"
  other = "# Results\n\n## Memory\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
  path.write_text(other)
  # Two simulated devices: figures per device of a sharded batch. A generous budget (the
  # run takes seconds) and short windows: nothing is skipped, and the test stays short (the
  # call that sizes the windows warms up). The second run compiles nothing: its programs
  # are the first run's batch-2 ones, in the test run's compilation cache (conftest.py).
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2")
  common = ["--model=tiny-R14", "--resolution=32", "--dtype=float32", "--windows=2",
            "--window_s=0.05", "--warmup=0", "--budget_s=300", "--peak_tflops=0.5",
            "--pipeline_images=0", f"--results={path}"]
  run = lambda *flags: subprocess.run([sys.executable, SCRIPT, *common, *flags], cwd=ROOT,
                                      env=env, capture_output=True, text=True, timeout=300)
  done = run("--batches=2,4")
  assert done.returncode == 0, done.stderr[-3000:]
  text = path.read_text()
  assert text.startswith(other)
  header, _, first = _table(text)
  assert header == list(accelerator.COLUMNS)
  cell = dict(zip(header, first))
  assert cell["date"] in done.stdout and first == _table(text)[-1]
  assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", cell["date"])
  assert re.fullmatch(r"[0-9a-f]{7,}(\+uncommitted)?|uncommitted", cell["commit"])
  assert (cell["device"], cell["devices"], cell["jax"]) == ("cpu:cpu", "2", jax.__version__)
  assert (cell["model"], cell["px"], cell["dtype"]) == ("tiny-R14", "32", "float32")
  assert cell["batch per device"] == "2 / 4"
  values = {}
  for key in ("train images/s per device", "inference images/s per device", "train MFU",
              "inference MFU", "train GFLOP per step per device",
              "inference GFLOP per step per device", "train peak GiB per device",
              "inference peak GiB per device"):
    values[key] = [_number(v) for v in cell[key].split(" / ")]
    assert len(values[key]) == 2 and min(values[key]) > 0, (key, cell[key])
  # XLA:CPU's count covers the jaxpr's convolutions and matrix products, and more.
  assert cell["FLOPs from"] == "xla / xla"
  for kind in ("train", "inference"):
    assert values[f"{kind} GFLOP per step per device"][1] > values[
        f"{kind} GFLOP per step per device"][0]  # 4 images a step cost more than 2.
    for i, batch in enumerate((2, 4)):
      mfu = (values[f"{kind} GFLOP per step per device"][i] * 1e9
             * values[f"{kind} images/s per device"][i] / batch / 0.5e12)
      # The MFU cell carries 3 significant figures (within 0.5%), the other two 4 (0.05%).
      assert values[f"{kind} MFU"][i] / 100 == pytest.approx(mfu, rel=0.01)
  # The input pipeline is measured in-process below: TensorFlow takes seconds to import.
  assert cell["input pipeline images/s (host cores)"] == "n/a (--pipeline_images=0)"
  assert cell["peak TFLOP/s per device"] == "0.5" and float(cell["run s"]) > 0

  done = run("--batches=2")
  assert done.returncode == 0, done.stderr[-3000:]
  rows = _table(path.read_text())[2:]
  assert len(rows) == 2 and rows[0] == first
  second = dict(zip(header, rows[1]))
  assert second["batch per device"] == "2" and _number(second["train images/s per device"]) > 0
  assert second["date"] in done.stdout and second["devices"] == "2"
  assert path.read_text().startswith(other)


def test_input_pipeline_rate_with_all_cores_or_why_not(monkeypatch):
  args = accelerator.parse_args(["--resolution=32", "--pipeline_images=8", "--windows=2",
                                 "--window_s=0.05"])
  measured = accelerator.measure_pipeline(args, 10, batch=4, share_s=1.0)
  rate, cores = re.fullmatch(r"([\d,.]+) \((\d+) cores\)", measured["pipeline"]).groups()
  assert measured["pipeline_rate"] > 0
  # The cell carries 4 significant figures (or all digits above 1,000): within 0.05%.
  assert _number(rate) == pytest.approx(measured["pipeline_rate"], rel=5e-4)
  assert int(cores) == len(os.sched_getaffinity(0))
  # The lent GPU machines have no TensorFlow: the cell says so, and the run goes on.
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  assert accelerator.measure_pipeline(args, 10, batch=4, share_s=1.0) == {
      "pipeline": "n/a (import of tensorflow halted; None in sys.modules)"}
