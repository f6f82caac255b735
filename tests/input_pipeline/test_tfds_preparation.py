"""Real TFDS builders prepared end to end, offline, and read as users read them.

Not `tfds.testing.mock_data`: each builder's own `download_and_prepare` downloads files in
the dataset's original format (made here from generated images) from an HTTP server on
127.0.0.1, extracts and parses them, and writes the TFDS files that `transfer.py` (cifar10),
a VTAB-1k task's registry entry (dtd) and `python -m bit_jax.evaluators`'s subset evaluator
(imagenet_a) then read with `data_dir`. An import that a preparation needs and
requirements.txt does not install fails here, as does any network access beyond 127.0.0.1.
"""
import dataclasses
import functools
import http.server
import inspect
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import input_pipeline as ip
from bit_jax import models, npz
from bit_jax.evaluators import __main__ as evaluators_cli
from bit_jax.vtab import registry, run as vtab_run
from configs import common
from configs import evaluate as evaluate_config
from configs import transfer as transfer_config
from tensorflow_datasets.core.utils import gcs_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOOPBACK = ("127.0.0.1", "localhost", "::1")

# Refuses every connection and name lookup but 127.0.0.1's, and writes each refused attempt
# to $BIT_TEST_NETWORK_LOG, which the `offline` fixture checks: an error the program swallows
# still fails the test. Python source, so a process the test starts runs it too (as
# `sitecustomize`, which `site` imports from PYTHONPATH before the command runs).
GUARD = f"""
import os, socket
_ALLOWED = {LOOPBACK!r}
_connect, _connect_ex, _getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                       socket.getaddrinfo)

def refuse(what):
  with open(os.environ["BIT_TEST_NETWORK_LOG"], "a") as f:
    f.write(what + "\\n")
  raise OSError("network access refused by the test: " + what)

def _check(sock, address):
  if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _ALLOWED:
    refuse(f"connect {{address}}")

def connect(self, address):
  _check(self, address)
  return _connect(self, address)

def connect_ex(self, address):
  _check(self, address)
  return _connect_ex(self, address)

def getaddrinfo(host, *args, **kwargs):
  if host is not None and str(host) not in _ALLOWED:
    refuse(f"getaddrinfo {{host}}")
  return _getaddrinfo(host, *args, **kwargs)
"""
INSTALL_GUARD = "socket.socket.connect, socket.socket.connect_ex = connect, connect_ex\n" \
                "socket.getaddrinfo = getaddrinfo\n"


@pytest.fixture
def offline(monkeypatch, tmp_path):
  """This process may reach 127.0.0.1 only (GUARD), nor TFDS's GCS bucket (gs://tfds-data,
  read through TensorFlow's C++ file system, which Python's sockets do not see). Yields the
  environment for a subprocess, guarded the same way but for GCS (which would import TFDS
  before the command does). Fails the test if anything was refused."""
  guard_dir, log = tmp_path / "network_guard", tmp_path / "network_attempts.txt"
  guard_dir.mkdir()
  (guard_dir / "sitecustomize.py").write_text(GUARD + INSTALL_GUARD)
  monkeypatch.setenv("BIT_TEST_NETWORK_LOG", str(log))
  for name in ("NO_PROXY", "no_proxy"):  # A proxy from the environment must not see 127.0.0.1.
    monkeypatch.setenv(name, "127.0.0.1,localhost")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      filter(None, [str(guard_dir), os.environ.get("PYTHONPATH")]))}
  guard = {}
  exec(GUARD, guard)  # pylint: disable=exec-used
  monkeypatch.setattr(socket.socket, "connect", guard["connect"])
  monkeypatch.setattr(socket.socket, "connect_ex", guard["connect_ex"])
  monkeypatch.setattr(socket, "getaddrinfo", guard["getaddrinfo"])
  monkeypatch.setattr(gcs_utils, "exists", lambda path: guard["refuse"](f"GCS {path}"))
  yield env
  assert not log.exists(), f"network access attempted: {log.read_text()}"


def test_the_guard_refuses_the_network_here_and_in_a_subprocess(offline, tmp_path):
  with pytest.raises(OSError, match="refused by the test"):
    socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routed.
  with pytest.raises(OSError, match="refused by the test"):
    gcs_utils.exists("gs://tfds-data")
  done = subprocess.run(
      [sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"],
      env=offline, capture_output=True, text=True, timeout=60)
  assert done.returncode == 1 and "refused by the test" in done.stderr, done.stderr
  log = tmp_path / "network_attempts.txt"
  assert log.read_text().splitlines() == ["getaddrinfo 192.0.2.1", "GCS gs://tfds-data",
                                          "getaddrinfo 192.0.2.1"]
  log.unlink()  # Else the fixture fails this test.


@dataclasses.dataclass
class Served:
  root: str  # Files here are served at url + "/" + their name.
  url: str
  requested: list  # Request paths, in order.


@pytest.fixture
def server(tmp_path):
  """An HTTP server on 127.0.0.1 (a free port) for the test's duration, then shut down."""
  root, requested = tmp_path / "www", []
  root.mkdir()

  class Handler(http.server.SimpleHTTPRequestHandler):

    def do_GET(self):  # pylint: disable=invalid-name
      requested.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      del args  # Quiet.

  httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
  thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  try:
    yield Served(str(root), f"http://127.0.0.1:{httpd.server_port}", requested)
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def serve(served: Served, original_url: str, archive: bytes) -> str:
  """Serves `archive` under the file name of the builder's `original_url`; returns its URL.

  A builder is pointed at it by patching only the URL: the download manager still downloads
  it (requests, over HTTP), picks the extraction from the file name and extracts it, and the
  builder parses what it finds. A URL that TFDS has no registered checksum for is downloaded
  and its checksum recorded, not validated (the default `force_checksums_validation=False`;
  the real URL's registered checksum is the real file's).
  """
  name = os.path.basename(original_url)
  with open(os.path.join(served.root, name), "wb") as f:
    f.write(archive)
  return f"{served.url}/{name}"


def builder_module(name: str):
  return sys.modules[tfds.builder_cls(name).__module__]


def tar(files: dict[str, bytes], mode: str = "w") -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode=mode) as archive:
    for path, data in sorted(files.items()):
      info = tarfile.TarInfo(path)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def jpeg(rgb, size: int = 8) -> bytes:
  """A solid-colour JPEG: each channel decodes to within 1 of its value (measured for the
  colours used here; the tests that read them back need less than 2.5)."""
  buffer = io.BytesIO()
  Image.new("RGB", (size, size), tuple(int(c) for c in rgb)).save(buffer, "JPEG", quality=95)
  return buffer.getvalue()


# --- cifar10, then transfer.py on it ------------------------------------------------------

CIFAR_TRAIN_PER_BATCH, CIFAR_TEST_PER_CLASS = 10, 2  # 5 batches: 50 train, 20 test.


def cifar10_archive(rng) -> tuple[bytes, dict[str, tuple[int, np.ndarray]], list[str]]:
  """`cifar-10-binary.tar.gz` as the real one is laid out, and {TFDS id: (label, image)}.

  Each record is one label byte and the image as 1024 red, 1024 green, 1024 blue bytes.
  """
  names = [f"class_{i}" for i in range(10)]
  files, examples = {"cifar-10-batches-bin/batches.meta.txt": ("\n".join(names) + "\n\n")
                     .encode()}, {}
  batches = [(f"data_batch_{b}.bin", "train_", CIFAR_TRAIN_PER_BATCH) for b in range(1, 6)]
  index = {"train_": 0, "test_": 0}  # TFDS's ids count on across a split's files.
  for name, prefix, n in batches + [("test_batch.bin", "test_", 10 * CIFAR_TEST_PER_CLASS)]:
    records = []
    for i in range(n):
      label, image = i % 10, rng.integers(0, 256, (32, 32, 3), np.uint8)
      records.append(bytes([label]) + image.transpose(2, 0, 1).tobytes())
      examples[f"{prefix}{index[prefix]:05d}"] = (label, image)
      index[prefix] += 1
    files[f"cifar-10-batches-bin/{name}"] = b"".join(records)
  return tar(files, "w:gz"), examples, names


def test_cifar10_prepared_from_its_archive_trains_and_evaluates_with_transfer_py(
    tmp_path, monkeypatch, server, offline):
  archive, written, names = cifar10_archive(np.random.default_rng(0))
  cifar = builder_module("cifar10")
  data_dir = str(tmp_path / "tfds")
  url = serve(server, cifar.Cifar10(data_dir=data_dir)._cifar_info.url, archive)
  cifar_info = cifar.Cifar10._cifar_info  # A property: the URL is a field of what it returns.
  monkeypatch.setattr(cifar.Cifar10, "_cifar_info",
                      property(lambda self: cifar_info.fget(self)._replace(url=url)))

  # What transfer.py does with a dataset not yet in data_dir: TFDS downloads and prepares it.
  source = ip.get_source("cifar10", data_dir)
  assert server.requested == ["/cifar-10-binary.tar.gz"]
  assert source.num_classes == 10 and source.builder.info.features["label"].names == names
  assert {k: v.num_examples for k, v in source.builder.info.splits.items()} == {
      "train": 5 * CIFAR_TRAIN_PER_BATCH, "test": 10 * CIFAR_TEST_PER_CLASS}
  read = {}
  for split in ("train", "test"):
    for example in source.builder.as_dataset(split=split).as_numpy_iterator():
      read[example["id"].decode()] = (int(example["label"]), example["image"])
  assert read.keys() == written.keys()
  for key, (label, image) in written.items():  # Stored as PNG: bitwise.
    assert read[key][0] == label and np.array_equal(read[key][1], image), key

  # The user's command, offline, reading the prepared data_dir; tiny-R14 from scratch,
  # 2 steps at 36/32 px (tests/tiny_configs.py).
  workdir = tmp_path / "transfer"
  done = subprocess.run(
      [sys.executable, "transfer.py", "--config=configs/transfer.py:model=tiny-R14,"
       "dataset=cifar10", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
       "--config.resolution=36,32", "--config.batch_size=16", "--config.eval_batch_size=16",
       "--config.total_steps=2", "--config.log_every_steps=1", "--config.shuffle_buffer=64"],
      cwd=ROOT, env=offline, capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(workdir / "results.json") as f:
    [run] = json.load(f)["runs"]
  assert run["evaluation"] == "finetune" and run["init"] == "scratch"
  assert run["num_test_examples"] == 10 * CIFAR_TEST_PER_CLASS  # The whole test split.
  assert run["schedule"][-1] == 2 and 0 <= run["top1"] <= 1
  table = done.stdout.strip().splitlines()
  assert table[0].split()[:3] == ["evaluation", "init", "shots"]
  assert server.requested == ["/cifar-10-binary.tar.gz"]  # Nothing downloaded again.


# --- a VTAB-1k task through its registry entry -------------------------------------------

# DTD's first fold as the real archive has it, but smaller (the real one has 40 images per
# class in each): just enough for the 1k splits, train[:800] and validation[:200].
DTD_SPLITS = {"train1": 18, "val1": 5, "test1": 1}  # Images per class; 47 classes.


def dtd_archive(class_names: list[str]) -> bytes:
  """`dtd-r1.0.1.tar.gz` as the real one is (a plain tar despite its name): images/<class>/
  and labels/{train,val,test}1.txt. An image of class c in split s is red 5c and green 100s,
  so what is read back tells where it came from."""
  files, lines = {}, {split: [] for split in DTD_SPLITS}
  for c, name in enumerate(class_names):
    for s, (split, n) in enumerate(DTD_SPLITS.items()):
      for k in range(n):
        fname = f"{name}/{name}_{s}{k:03d}.jpg"
        files[f"dtd/images/{fname}"] = jpeg((5 * c, 100 * s, 128))
        lines[split].append(fname)
  for split, names in lines.items():
    files[f"dtd/labels/{split}.txt"] = "\n".join(names).encode() + b"\n"
  return tar(files)


def test_vtab_dtd_prepared_from_its_archive_gives_the_1k_splits(tmp_path, monkeypatch,
                                                                server, offline):
  task = registry.get("dtd")
  names = tfds.builder_cls("dtd")(data_dir=str(tmp_path / "probe")).info.features[
      "label"].names
  assert len(names) == task.num_classes
  dtd = builder_module("dtd")
  monkeypatch.setattr(dtd, "_DATA_URL", serve(server, dtd._DATA_URL, dtd_archive(names)))

  # `python -m bit_jax.vtab run`'s data: the registry's TFDS name, prepared on first use.
  source = vtab_run.task_source(task, str(tmp_path / "tfds"))
  assert server.requested == ["/dtd-r1.0.1.tar.gz"]
  # {split key: (examples, how many from each of train1, val1, test1)}; test is the whole
  # TFDS test split (the real one's 1880 is in registry.num_examples).
  test = task.num_classes * DTD_SPLITS["test1"]
  expected = {"train800": (800, [800]), "val200": (200, [0, 200]),
              "train800val200": (1000, [800, 200]), "test": (test, [0, 0, test])}
  for key in registry.SPLIT_KEYS:
    n, from_each = expected[key]
    if key != "test":
      assert registry.num_examples(task, key) == n
    assert source.num_examples(task.splits[key]) == n, key
    read = list(source.read(task.splits[key]).as_numpy_iterator())
    pixels = np.array([example["image"].reshape(-1, 3).mean(0) for example in read])
    labels = np.array([example["label"] for example in read])
    assert len(read) == n and np.array_equal(labels, np.round(pixels[:, 0] / 5)), key
    assert np.bincount(np.round(pixels[:, 1] / 100).astype(int)).tolist() == from_each, key


# --- an evaluate dataset, read by its evaluator ------------------------------------------

# ImageNet indices: 6, 11 and 13 are among ImageNet-A's 200 classes, 0 is not.
IMAGENET_A_IMAGES = {6: 3, 11: 2, 13: 1, 0: 2}


def test_imagenet_a_prepared_from_its_archive_is_scored_by_the_subset_evaluator(
    tmp_path, monkeypatch, server, offline, caplog):
  wnids = tfds.builder_cls("imagenet_a")(data_dir=str(tmp_path / "probe")).info.features[
      "label"].names
  files = {"imagenet-a/README.txt": b"ImageNet-A\n"}
  for index, n in IMAGENET_A_IMAGES.items():
    for k in range(n):
      # File names are unique across classes: TFDS keys examples by them.
      files[f"imagenet-a/{wnids[index]}/{wnids[index]}_{k}.jpg"] = jpeg((40 * k, 60, 90), 40)
  module = builder_module("imagenet_a")
  monkeypatch.setattr(module, "_IMAGENET_A_URL",
                      serve(server, module._IMAGENET_A_URL, tar(files)))

  # A 1000-way tiny-R14 whose logits are its head's bias: 6 first, then 11, then 13.
  model = models.get_model("tiny-R14", num_classes=1000)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  params["head"]["kernel"] = jnp.zeros_like(params["head"]["kernel"])
  params["head"]["bias"] = jnp.zeros(1000).at[jnp.array([6, 11, 13])].set(jnp.array([3., 2., 1.]))
  npz.save(params, tmp_path / "model.npz")
  config = evaluate_config.get_config("crop=32")
  config.update(dict(model="tiny-R14", eval_batch_size=16, data_dir=str(tmp_path / "tfds")))
  for name in config.evals:
    config.evals[name].enabled = name == "imagenet_a"
  assert config.evals.imagenet_a.dataset == "imagenet_a"

  results = evaluators_cli.evaluate(config, str(tmp_path / "model.npz"), str(tmp_path / "eval"))
  # A failing evaluator is logged and switched off, and the run goes on: say why.
  assert "imagenet_a/top1" in results[evaluators_cli.NPZ_KEY], [
      r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert server.requested == ["/imagenet-a.tar"]
  metrics = results[evaluators_cli.NPZ_KEY]
  # Class 0 is not counted; every counted image is predicted 6 (top-1), and its class is
  # among 6, 11, 13 (top-5): exact ratios of image counts.
  assert metrics["imagenet_a/num_counted"] == 6
  assert metrics["imagenet_a/top1"] == IMAGENET_A_IMAGES[6] / 6
  assert metrics["imagenet_a/top5"] == 1.0


# --- every dataset the configs name: what its preparation imports is installed -----------

def named_tfds_datasets() -> set[str]:
  """The TFDS builders the configs and the VTAB registry name (imagenet21k, BiT-M's upstream,
  is no TFDS builder: users prepare it themselves)."""
  names = {task.tfds for task in registry.TASKS}
  names |= {dataset for dataset, _, _ in common.COMMON_FEWSHOT.values()}
  config = evaluate_config.get_config()
  names |= {config.dataset} | {entry.dataset for entry in config.evals.values() if
                               entry.dataset  # "": the config's dataset.
                               and not entry.dataset.startswith(ip.datasets.FOLDER_PREFIX)}
  names |= {transfer_config.get_config().dataset, "cifar100"}
  return {name.split(":")[0].split("/")[0] for name in names}


def test_every_named_builder_finds_what_its_preparation_imports():
  """TFDS imports these only while preparing (`tfds.core.lazy_imports`, read here from each
  builder's source and the TFDS modules it uses; `code_path` for its checksums; BeautifulSoup
  for a Google Drive download page): a missing one would first fail in a user's download."""
  found = {}
  for name in sorted(named_tfds_datasets()):
    builder = tfds.builder_cls(name)
    module = sys.modules[builder.__module__]
    modules = [module] + [m for m in vars(module).values() if inspect.ismodule(m)
                          and m.__name__.startswith("tensorflow_datasets.datasets.")]
    source = "".join(inspect.getsource(m) for m in modules)
    wanted = set(re.findall(r"lazy_imports\.(\w+)", source))
    if "drive.google.com" in source:
      wanted.add("bs4")
    for attribute in sorted(wanted):
      getattr(tfds.core.lazy_imports, attribute)  # ImportError if not installed.
    assert builder.code_path is not None, name  # Imports importlib_resources.
    found[name] = wanted
  assert {"cifar10", "dtd", "imagenet_a", "imagenet_sketch", "cars196"} <= found.keys()
  assert {"cv2", "scipy", "h5py", "PIL_Image", "bs4"} <= set().union(*found.values())
  assert "cv2" in found["diabetic_retinopathy_detection"]


def test_diabetic_retinopathy_btgraham_processing_runs_on_the_installed_opencv():
  """btgraham-300 (the VTAB task's config) rescales each eye to a 300 px radius, subtracts
  the local average and crops to 90% of it with OpenCV: 540 x 540, the registry's image_hw."""
  module = builder_module("diabetic_retinopathy_detection")
  eye = Image.new("RGB", (300, 200))
  eye.paste((150, 80, 40), (75, 25, 225, 175))  # A 150 px wide "eyeball" on black.
  buffer = io.BytesIO()
  eye.save(buffer, "PNG")
  buffer.seek(0)
  out = module._btgraham_processing(buffer, "eye.png", target_pixels=300, crop_to_radius=True)
  processed = np.asarray(Image.open(out))
  assert processed.shape == (540, 540, 3)
  assert tuple(registry.get("diabetic_retinopathy").image_hw) == processed.shape[:2]
