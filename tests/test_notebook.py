"""notebooks/transfer.ipynb, executed top to bottom (shortened) on the demo's checkpoint."""
import base64
import json
import os
import re
import sys

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from bit_jax import transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "transfer.ipynb")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = 5  # Data, learning rate, top-1 vs shots, reliability diagram, predictions.


def test_the_committed_notebook_is_valid_and_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_notebook_runs_on_the_demo_checkpoint(demo_run, tmp_path, monkeypatch):
  pretrain_dir, pretraining = demo_run
  assert pretraining.returncode == 0, pretraining.stderr[-2000:]
  monkeypatch.setenv("BIT_NOTEBOOK_INIT", pretrain_dir)
  monkeypatch.setenv("BIT_NOTEBOOK_WORKDIR", str(tmp_path))
  monkeypatch.setenv("BIT_NOTEBOOK_FAST", "1")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # No kernel directories: ipykernel's own spec, this interpreter, whatever else is installed.
  kernel = KernelManager(kernel_name="python3",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
  NotebookClient(notebook, km=kernel, timeout=600,
                 resources={"metadata": {"path": ROOT}}).execute()  # Raises on a cell's error.
  assert kernel.kernel_spec.argv[0] == sys.executable

  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  stdout = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
  pngs = [base64.b64decode(o.data["image/png"]) for o in outputs
          if o.output_type == "display_data" and "image/png" in o.data]
  assert len(pngs) == FIGURES and all(png.startswith(PNG_SIGNATURE) for png in pngs)
  assert f"checkpoint: {os.path.join(pretrain_dir, 'params.npz')}\nmodel: tiny-R14" in stdout

  rows = {tuple(line.split()[:3]) for line in stdout.splitlines()
          if line.startswith(("finetune ", "bigvision_fewshot "))}
  assert {("finetune", init, shots) for init in ("pretrained", "scratch")
          for shots in ("5", "10")} <= rows
  assert {("bigvision_fewshot", init, "10") for init in ("pretrained", "scratch")} <= rows
  with open(tmp_path / transfer.RESULTS_NAME) as f:
    runs = json.load(f)["runs"]
  assert len(runs) == 4 and all(r["num_test_examples"] == 500 for r in runs)
  # The notebook's unrolled fine-tuning is the library's run: same plan, seed and data.
  [(mine, table)] = re.findall(r"test top-1 ([\d.]+)% \(the table's run: ([\d.]+)%\)", stdout)
  assert mine == table
