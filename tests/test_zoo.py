"""The released-model zoo, offline: a local HTTP server stands in for the BiT bucket."""
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from bit_jax import models, zoo
from bit_jax.errors import UserError
from tests.official_layout import make_official_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = zoo.Checkpoint("tiny-test", "tiny-R14", "test data", num_classes=10)
CATALOGUE = {TINY.name: TINY}
RELEASED = [f"BiT-{s}-{a}" for s in "SM"
            for a in ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")]


def _npz_bytes(**kwargs):
  buffer = io.BytesIO()
  np.savez(buffer, **make_official_weights(**kwargs))
  return buffer.getvalue()


WEIGHTS = _npz_bytes(num_classes=10)  # Fits tiny-R14 with a 10-class head.


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves `server.files`; `server.mode`: range, ignore_range, 404 or drop (half a body,
  then the connection closes). Each request is logged with its Range header and bytes sent."""

  def do_GET(self):  # pylint: disable=invalid-name
    server = self.server
    data = server.files.get(self.path)
    log = {"path": self.path, "range": self.headers.get("Range"), "sent": 0}
    server.requests.append(log)
    if data is None or server.mode == "404":
      self.send_error(404)
      return
    start = 0
    if log["range"] and server.mode != "ignore_range":
      start = int(re.fullmatch(r"bytes=(\d+)-", log["range"]).group(1))
      if start >= len(data):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{len(data)}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
      self.send_response(200)
    body = data[start:]
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if server.mode == "drop":
      body = body[:len(body) // 2]
    self.wfile.write(body)
    log["sent"] = len(body)
    if server.mode == "drop":
      self.wfile.flush()
      self.connection.shutdown(socket.SHUT_RDWR)

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  httpd.files = {"/bits/tiny-test.npz": WEIGHTS}
  httpd.mode = "range"
  httpd.requests = []
  httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/bits"
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def _download(server, tmp_path, **kwargs):
  return zoo.download("tiny-test", str(tmp_path), server.url, catalogue=CATALOGUE,
                      progress=kwargs.pop("progress", False), **kwargs)


def _main_fails(argv, capsys, code):
  """Runs the command line in-process; asserts its exit code and one `error:` line."""
  with pytest.raises(SystemExit) as done:
    zoo.main(argv, catalogue=CATALOGUE)
  assert done.value.code == code
  last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
  assert last.startswith("error: ") and "\r" not in last
  return last


def _nothing_final(tmp_path):
  return not (tmp_path / "tiny-test.npz").exists()


def test_list_covers_the_release_as_text_json_and_markdown(capsys):
  zoo.main(["list"])
  text = capsys.readouterr().out
  for name in RELEASED:
    assert re.search(rf"^{name} +{name[6:]} ", text, re.M)
    assert re.search(rf"^{name}-ILSVRC2012 +{name[6:]} +ImageNet-21k +ILSVRC-2012 +1000 ",
                     text, re.M) or name.startswith("BiT-S")
  assert "ILSVRC-2012 top-1 85.39 [paper]" in text and "[paper] Kolesnikov et al." in text

  zoo.main(["list", "--json"])
  listed = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
  assert set(RELEASED) | {f"{n}-ILSVRC2012" for n in RELEASED[6:]} == set(listed)
  for name, c in listed.items():
    assert c["model"] in models.MODEL_NAMES and name.startswith(c["model"])
    assert c["url"] == f"https://storage.googleapis.com/bit_models/{name}.npz"
    assert c["size_bytes"] is None  # No source states the sizes.
    assert c["num_classes"] == (21843 if c["upstream"] == "ImageNet-21k" and
                                not c["fine_tuned"] else 1000)
  assert listed["BiT-M-R50x1-ILSVRC2012"]["published"][0]["value"] == 80.68

  zoo.main(["list", "--markdown"])
  assert capsys.readouterr().out.strip() == zoo.markdown()


def test_readme_table_is_the_list_output():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    assert zoo.markdown() in f.read()


def test_download_verifies_then_renames(server, tmp_path):
  progress = io.StringIO()
  path = _download(server, tmp_path, progress=progress)
  assert path == str(tmp_path / "tiny-test.npz")
  assert open(path, "rb").read() == WEIGHTS
  assert os.listdir(tmp_path) == ["tiny-test.npz"]
  assert [r["range"] for r in server.requests] == [None]
  assert progress.getvalue().rstrip().endswith("MB/s") and "100%" in progress.getvalue()
  # Already there: returned, nothing fetched.
  assert _download(server, tmp_path) == path and len(server.requests) == 1


def test_resume_asks_for_and_gets_only_the_rest(server, tmp_path):
  kept = len(WEIGHTS) // 3
  (tmp_path / "tiny-test.npz.part").write_bytes(WEIGHTS[:kept])
  path = _download(server, tmp_path)
  assert open(path, "rb").read() == WEIGHTS
  assert server.requests == [{"path": "/bits/tiny-test.npz", "range": f"bytes={kept}-",
                              "sent": len(WEIGHTS) - kept}]
  assert not (tmp_path / "tiny-test.npz.part").exists()


def test_a_complete_part_file_is_verified_without_a_transfer(server, tmp_path):
  (tmp_path / "tiny-test.npz.part").write_bytes(WEIGHTS)
  assert open(_download(server, tmp_path), "rb").read() == WEIGHTS
  assert server.requests == [{"path": "/bits/tiny-test.npz", "range": f"bytes={len(WEIGHTS)}-",
                              "sent": 0}]  # The server answered 416: nothing after the end.


def test_a_part_file_longer_than_the_file_is_downloaded_again(server, tmp_path):
  (tmp_path / "tiny-test.npz.part").write_bytes(WEIGHTS + b"junk")
  assert open(_download(server, tmp_path), "rb").read() == WEIGHTS
  assert [(r["range"], r["sent"]) for r in server.requests] == [
      (f"bytes={len(WEIGHTS) + 4}-", 0), (None, len(WEIGHTS))]


def test_a_server_that_ignores_range_is_read_from_the_start(server, tmp_path):
  server.mode = "ignore_range"
  (tmp_path / "tiny-test.npz.part").write_bytes(b"x" * 1000)  # Not even the right bytes.
  progress = io.StringIO()
  path = _download(server, tmp_path, progress=progress)
  assert open(path, "rb").read() == WEIGHTS
  assert server.requests[0]["range"] == "bytes=1000-"
  assert server.requests[0]["sent"] == len(WEIGHTS)
  assert "ignored the range request" in progress.getvalue()


def test_http_404_is_one_line_and_leaves_nothing(server, tmp_path, capsys):
  server.mode = "404"
  line = _main_fails(["download", "tiny-test", f"--dir={tmp_path}",
                      f"--base_url={server.url}"], capsys, 2)
  assert f"{server.url}/tiny-test.npz: HTTP 404" in line and "--base_url" in line
  assert os.listdir(tmp_path) == []


def test_a_dropped_connection_keeps_the_part_file_and_a_rerun_resumes(server, tmp_path,
                                                                      capsys):
  server.mode = "drop"
  argv = ["download", "tiny-test", f"--dir={tmp_path}", f"--base_url={server.url}"]
  line = _main_fails(argv, capsys, 1)
  half = len(WEIGHTS) // 2
  assert f"closed after {half} of {len(WEIGHTS)} bytes" in line
  assert "tiny-test.npz.part is kept: rerun the same command to resume" in line
  assert _nothing_final(tmp_path)
  assert (tmp_path / "tiny-test.npz.part").stat().st_size == half

  server.mode = "range"
  zoo.main(argv, catalogue=CATALOGUE)
  assert capsys.readouterr().out.strip() == str(tmp_path / "tiny-test.npz")
  assert server.requests[-1]["range"] == f"bytes={half}-"
  assert open(tmp_path / "tiny-test.npz", "rb").read() == WEIGHTS


@pytest.mark.parametrize("served, checkpoint, expected", [
    (_npz_bytes(units=(2, 1, 1, 1)), TINY,
     "does not fit the model tiny-R14 .* unexpected, e.g. block1/unit02/"),
    (_npz_bytes(num_classes=5), TINY, "has a 5-class head; tiny-test has 10 classes"),
    (_npz_bytes(num_classes=0), zoo.Checkpoint("tiny-test", "tiny-R14", "x", 10, "y"),
     "has no head; tiny-test is a 10-class classifier"),
    (b"<html>not found</html>", TINY, "is not a zip/.npz file"),
    (WEIGHTS, zoo.Checkpoint("tiny-test", "tiny-R14", "x", 10, size=len(WEIGHTS) + 1),
     f"it has {len(WEIGHTS)} bytes, the release's file {len(WEIGHTS) + 1}"),
], ids=["architecture", "head", "headless", "not-npz", "size"])
def test_a_file_that_fails_verification_is_removed(server, tmp_path, capsys, served,
                                                   checkpoint, expected):
  server.files["/bits/tiny-test.npz"] = served
  with pytest.raises(SystemExit) as done:
    zoo.main(["download", "tiny-test", f"--dir={tmp_path}", f"--base_url={server.url}"],
             catalogue={"tiny-test": checkpoint})
  assert done.value.code == 2
  line = capsys.readouterr().err.strip().split("\n")[-1]
  assert line.startswith(f"error: {server.url}/tiny-test.npz failed verification, ")
  assert "tiny-test.npz.part removed: " in line and re.search(expected, line)
  assert os.listdir(tmp_path) == []


def test_offline_and_bad_urls_are_one_line(tmp_path, capsys):
  with socket.socket() as s:  # A port nothing listens on: connection refused.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  line = _main_fails(["download", "tiny-test", f"--dir={tmp_path}",
                      f"--base_url=http://127.0.0.1:{port}"], capsys, 1)
  assert line.startswith(f"error: cannot download http://127.0.0.1:{port}/tiny-test.npz: ")
  assert "refused" in line and line.endswith("check the network and rerun")
  line = _main_fails(["download", "tiny-test", f"--dir={tmp_path}", "--base_url=bucket/bits"],
                     capsys, 2)
  assert "bad URL 'bucket/bits/tiny-test.npz'" in line
  assert _nothing_final(tmp_path) and not (tmp_path / "tiny-test.npz.part").exists()


def test_unknown_name_lists_the_valid_ones(capsys):
  with pytest.raises(SystemExit) as done:
    zoo.main(["download", "BiT-M-R50x2", "--dir=/nonexistent"])
  assert done.value.code == 2
  assert capsys.readouterr().err == (
      f"error: unknown checkpoint 'BiT-M-R50x2'; valid names: {', '.join(zoo.CATALOGUE)}\n")


def test_resolve_finds_the_cache_or_says_how_to_fill_it(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  with pytest.raises(UserError) as missing:
    zoo.resolve("BiT-M-R50x1", str(cache))
  assert str(missing.value) == (
      f"checkpoint BiT-M-R50x1 is not downloaded (no {cache}/BiT-M-R50x1.npz); fetch it with: "
      f"python -m bit_jax.zoo download BiT-M-R50x1 --dir={cache}")
  cache.mkdir()
  (cache / "BiT-M-R50x1.npz").write_bytes(b"")
  assert zoo.resolve("BiT-M-R50x1", str(cache)) == str(cache / "BiT-M-R50x1.npz")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(zoo.CACHE_ENV, str(cache))  # The default cache.
  assert zoo.resolve("BiT-M-R50x1.npz") == str(cache / "BiT-M-R50x1.npz")
  (tmp_path / "BiT-M-R50x1.npz").write_bytes(b"")  # A file here wins over the cache.
  assert zoo.resolve("BiT-M-R50x1.npz") == "BiT-M-R50x1.npz"
  for given in ("", "mine.npz", "workdir/demo"):  # Not names: left to the caller.
    assert zoo.resolve(given) == given


def test_command_line():
  command = [sys.executable, "-m", "bit_jax.zoo"]
  listed = subprocess.run([*command, "list", "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
  assert listed.returncode == 0, listed.stderr[-2000:]
  assert len(json.loads(listed.stdout)) == len(zoo.CATALOGUE)
  bad = subprocess.run([*command, "download", "BiT-X"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
  assert bad.returncode == 2
  assert bad.stderr.startswith("error: unknown checkpoint 'BiT-X'; valid names: BiT-S-R50x1")
