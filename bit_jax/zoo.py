"""The released BiT checkpoints: list them, download one (resumable, verified), find it by name.

    python -m bit_jax.zoo list [--json | --markdown]
    python -m bit_jax.zoo download BiT-M-R50x1 [--dir=DIR] [--base_url=URL]

`download` fetches `{base_url}/{NAME}.npz` into `DIR/NAME.npz.part`, resuming what an earlier
run left there (an HTTP Range request; a server that ignores it is read again from the
start), checks the size the server announced, loads the file and fits it to its architecture
(`npz.load` + `pretrained.fit`; the head must have the catalogue's number of classes), and
only then renames it to `DIR/NAME.npz`: the final name never holds a partial or unverified
file. Exit status: 2 for an unknown name, a bad URL, an HTTP error such as 404 or a file that
fails verification (it is removed); 1 when the network fails (the `.part` file is kept, so
rerunning the same command resumes). `DIR` defaults to the cache that `resolve` reads:
`$BIT_ZOO_DIR`, else `~/.cache/bit_jax`.

`resolve(name_or_path)` turns a checkpoint name given where a path is expected
(`--config.init=BiT-M-R50x1`) into the cached file, or fails with one line giving the exact
download command.

The catalogue is data (`CATALOGUE`, `Checkpoint`); every function takes `catalogue=` so tests
and private mirrors can pass their own entries. Sources of its facts:

- Names, the bucket `https://storage.googleapis.com/bit_models/`, the six architectures
  (R152x2 added after the paper) and the BiT-M `-ILSVRC2012` variants ("pre-trained on
  ImageNet-21k and fine-tuned on ILSVRC-2012"): the README of github.com/google-research/
  big_transfer and its issue #13. BiT-M heads have 21843 classes (ImageNet-21k; the release's
  `bit_pytorch/models.py` loads them with `head_size=21843`); BiT-S and the `-ILSVRC2012`
  variants have ILSVRC-2012's 1000.
- [paper]: Kolesnikov et al. 2019, "Big Transfer (BiT): General Visual Representation
  Learning", arXiv:1912.11370, for BiT-S/BiT-M R152x4: VTAB-1k 19-task mean top-1 66.9 and
  70.6; ILSVRC-2012 top-1 of BiT-M fine-tuned on it, 85.39.
- [big_transfer]: the big_transfer README's "Expected results": ILSVRC-2012 top-1 of BiT-M-R50x1
  and BiT-M-R152x2 fine-tuned with the BiT-HyperRule in PyTorch, 80.68 and 85.15 ("some test
  runs", not evaluations of the released `-ILSVRC2012` files); VTAB-1k means of re-runs
  ("not the exact paper models") from BiT-M-R152x4, 73.51, and BiT-M-R101x3, 72.65.
- File sizes: no primary source states them, so the catalogue says unknown; a download is
  checked against the server's Content-Length instead. Parameter counts are in README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import re
import shlex
import sys
import time
import urllib.error
import urllib.request
from typing import IO, Any, Mapping, Sequence

import jax

from bit_jax import entry, models, npz, pretrained
from bit_jax.errors import UserError

DEFAULT_BASE_URL = "https://storage.googleapis.com/bit_models"
CACHE_ENV = "BIT_ZOO_DIR"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "bit_jax")
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # Per socket operation, not for the whole download.
COMMAND = "python -m bit_jax.zoo"

SOURCES = {
    "paper": "Kolesnikov et al. 2019, Big Transfer (BiT): General Visual Representation "
             "Learning, arXiv:1912.11370",
    "big_transfer": "github.com/google-research/big_transfer README, Expected results "
                    "(re-runs, not evaluations of the released files)",
}


class NetworkError(ConnectionError):
  """The server could not be reached or the transfer broke off; rerunning resumes it."""


@dataclasses.dataclass(frozen=True)
class Result:
  metric: str   # What was measured, e.g. "VTAB-1k mean top-1".
  value: float  # Percent.
  source: str   # A key of SOURCES.


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One released file, `{base_url}/{name}.npz`."""
  name: str
  model: str          # A `models.MODEL_NAMES` name: the architecture the file must fit.
  upstream: str       # The dataset it was pre-trained on.
  num_classes: int    # Classes of the file's head.
  fine_tuned: str | None = None  # The dataset it was then fine-tuned on, if any.
  size: int | None = None        # Bytes, where known; None: the server's Content-Length.
  published: tuple[Result, ...] = ()

  @property
  def architecture(self) -> str:
    return models.MODEL_NAMES[self.model]

  def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
    return f"{base_url.rstrip('/')}/{self.name}.npz"


def _catalogue() -> dict[str, Checkpoint]:
  upstreams = {"S": ("ILSVRC-2012", 1000), "M": ("ImageNet-21k", 21843)}
  published = {
      "BiT-S-R152x4": (Result("VTAB-1k mean top-1", 66.9, "paper"),),
      "BiT-M-R152x4": (Result("VTAB-1k mean top-1", 70.6, "paper"),
                       Result("VTAB-1k mean top-1", 73.51, "big_transfer")),
      "BiT-M-R101x3": (Result("VTAB-1k mean top-1", 72.65, "big_transfer"),),
      "BiT-M-R50x1-ILSVRC2012": (Result("ILSVRC-2012 top-1", 80.68, "big_transfer"),),
      "BiT-M-R152x2-ILSVRC2012": (Result("ILSVRC-2012 top-1", 85.15, "big_transfer"),),
      "BiT-M-R152x4-ILSVRC2012": (Result("ILSVRC-2012 top-1", 85.39, "paper"),),
  }
  entries = []
  for upstream, (dataset, classes) in upstreams.items():
    for arch in models.ARCHITECTURES:
      name = f"BiT-{upstream}-{arch}"
      entries.append(Checkpoint(name, name, dataset, classes,
                                published=published.get(name, ())))
  for arch in models.ARCHITECTURES:
    name = f"BiT-M-{arch}-ILSVRC2012"
    entries.append(Checkpoint(name, f"BiT-M-{arch}", "ImageNet-21k", 1000,
                              fine_tuned="ILSVRC-2012", published=published.get(name, ())))
  return {c.name: c for c in entries}


CATALOGUE: Mapping[str, Checkpoint] = _catalogue()


def lookup(name: str, catalogue: Mapping[str, Checkpoint] = CATALOGUE) -> Checkpoint:
  if name not in catalogue:
    raise UserError(f"unknown checkpoint {name!r}; valid names: {', '.join(catalogue)}")
  return catalogue[name]


def default_cache_dir() -> str:
  """Where `download` puts files and `resolve` finds them by default."""
  return os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def download_command(name: str, directory: str) -> str:
  return f"{COMMAND} download {name} --dir={shlex.quote(directory)}"


def resolve(name_or_path: str, cache_dir: str | None = None, *,
            catalogue: Mapping[str, Checkpoint] = CATALOGUE) -> str:
  """The file a `--config.init` value means.

  An existing path, an empty string and anything that is not a catalogue name come back as
  given. A catalogue name (`BiT-M-R50x1`, or `BiT-M-R50x1.npz` with no directory when no
  such file is here) is `CACHE/BiT-M-R50x1.npz`, where CACHE is `cache_dir`, `$BIT_ZOO_DIR`
  or `~/.cache/bit_jax`; if that is not there, a UserError gives the command that fetches it.
  """
  if not name_or_path or os.path.exists(name_or_path):
    return name_or_path
  name = name_or_path[:-len(".npz")] if name_or_path.endswith(".npz") else name_or_path
  if name not in catalogue:
    return name_or_path
  directory = os.path.expanduser(cache_dir or default_cache_dir())
  path = os.path.join(directory, f"{name}.npz")
  if not os.path.isfile(path):
    raise UserError(f"checkpoint {name} is not downloaded (no {path}); fetch it with: "
                    f"{download_command(name, directory)}")
  return path


def download(name: str, directory: str | None = None, base_url: str = DEFAULT_BASE_URL, *,
             catalogue: Mapping[str, Checkpoint] = CATALOGUE, progress: IO | bool = True,
             timeout: float = TIMEOUT_S) -> str:
  """Fetches, verifies and returns `DIRECTORY/NAME.npz` (see the module docstring).

  Raises UserError for an unknown name, a bad URL, an HTTP error or a file that fails
  verification (removed), NetworkError when the transfer fails (the `.part` file is kept).
  A file already at `DIRECTORY/NAME.npz` is returned as it is. `progress`: the stream for
  the progress bar; True: stderr; False: none.
  """
  checkpoint = lookup(name, catalogue)
  directory = directory or default_cache_dir()
  final = os.path.join(directory, f"{name}.npz")
  if os.path.isfile(final):
    return final
  os.makedirs(directory, exist_ok=True)
  part = final + PART_SUFFIX
  url = checkpoint.url(base_url)
  stream = sys.stderr if progress is True else progress or None
  _fetch(url, part, name, stream, timeout)
  try:
    size = os.path.getsize(part)
    if checkpoint.size is not None and size != checkpoint.size:
      raise UserError(f"it has {size} bytes, the release's file {checkpoint.size}")
    verify(part, checkpoint)
  except UserError as e:
    os.remove(part)
    raise UserError(f"{url} failed verification, {part} removed: {e}") from None
  os.replace(part, final)
  return final


def verify(path: str, checkpoint: Checkpoint) -> pretrained.FitReport:
  """Raises UserError unless `path` loads and fits `checkpoint`'s architecture and head."""
  params = npz.load(path)
  model = models.get_model(checkpoint.model, checkpoint.num_classes, kernels="plain")
  _, report = pretrained.fit(params, model, source=path)
  head = npz.flatten(params).get(pretrained.HEAD + "kernel")
  if head is None and checkpoint.fine_tuned:
    raise UserError(f"{path} has no head; {checkpoint.name} is a {checkpoint.num_classes}-class "
                    "classifier")
  if head is not None and head.shape[-1] != checkpoint.num_classes:
    raise UserError(f"{path} has a {head.shape[-1]}-class head; {checkpoint.name} has "
                    f"{checkpoint.num_classes} classes")
  return report


def _fetch(url: str, part: str, label: str, progress: IO | None, timeout: float) -> None:
  """Completes `part` from `url`; on return it holds every byte the server announced."""
  offset = os.path.getsize(part) if os.path.isfile(part) else 0
  try:
    response = _open(url, offset, timeout)
  except _NothingAfter as e:
    if e.total == offset:  # `part` already holds the whole file.
      return
    os.remove(part)  # Longer than the file, so not a piece of it: start over.
    return _fetch(url, part, label, progress, timeout)
  with response:
    start, total = _body_range(response)
    if response.status == 206 and start != offset:
      if not offset:
        raise UserError(f"{url}: the server sent part of the file unasked (HTTP 206)")
      response.close()  # Not the range asked for: ask for the whole file instead.
      os.remove(part)
      return _fetch(url, part, label, progress, timeout)
    if offset and start != offset:  # The server ignored the Range request (200): restart.
      offset = 0
      if progress is not None:
        print(f"{label}: the server ignored the range request; downloading from the start",
              file=progress)
    bar = _Progress(label, offset, total, progress)
    with open(part, "ab" if offset else "wb") as f:
      while True:
        try:
          chunk = response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as e:
          bar.close()
          raise NetworkError(f"the download of {url} broke off ({e}); {_kept(part)}") from None
        if not chunk:
          break
        f.write(chunk)
        bar.update(len(chunk))
    bar.close()
  size = os.path.getsize(part)
  if total is not None and size < total:
    raise NetworkError(f"the connection to {url} closed after {size} of {total} bytes; "
                       f"{_kept(part)}")
  if total is not None and size > total:
    os.remove(part)
    raise UserError(f"{url}: {part} grew to {size} bytes, more than the {total} the server "
                    "announced; removed it, rerun to download again")


class _NothingAfter(Exception):
  """HTTP 416 for a Range request: the file (of `total` bytes, None if not said) ends there."""

  def __init__(self, total: int | None):
    super().__init__(total)
    self.total = total


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
  """The response to GET `url` from byte `offset` on."""
  headers = {"Range": f"bytes={offset}-"} if offset else {}
  try:
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
  except urllib.error.HTTPError as e:
    e.close()
    if e.code == 416 and offset:
      total = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range") or "")
      raise _NothingAfter(int(total.group(1)) if total else None) from None
    hint = "; is --base_url right?" if e.code == 404 else ""
    raise UserError(f"{url}: HTTP {e.code} {e.reason}{hint}") from None
  except ValueError as e:  # Not a URL, e.g. --base_url without a scheme.
    raise UserError(f"bad URL {url!r} ({e}); --base_url takes e.g. {DEFAULT_BASE_URL}") from None
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    reason = getattr(e, "reason", e)
    raise NetworkError(f"cannot download {url}: {reason}; check the network and rerun"
                       ) from None


def _body_range(response: http.client.HTTPResponse) -> tuple[int, int | None]:
  """(offset of the body's first byte in the file, the file's size or None if unknown)."""
  if response.status == 206:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if match:
      total = None if match.group(2) == "*" else int(match.group(2))
      return int(match.group(1)), total
    return -1, None  # Unreadable: treated as a server that ignores ranges.
  length = response.headers.get("Content-Length")
  return 0, int(length) if length and length.isdigit() else None


def _kept(part: str) -> str:
  return f"{part} is kept: rerun the same command to resume"


class _Progress:
  """`NAME  12.3 / 102.2 MB  12%  8.1 MB/s` on one line of `stream`, redrawn twice a second."""

  def __init__(self, label: str, done: int, total: int | None, stream: IO | None):
    self.label, self.done, self.total, self.stream = label, done, total, stream
    self.start_done, self.start, self.drawn = done, time.monotonic(), 0.0

  def update(self, count: int) -> None:
    self.done += count
    if self.stream is not None and time.monotonic() - self.drawn >= 0.5:
      self._draw()

  def close(self) -> None:
    if self.stream is not None:
      self._draw()
      self.stream.write("\n")
      self.stream.flush()

  def _draw(self) -> None:
    self.drawn = time.monotonic()
    rate = (self.done - self.start_done) / max(self.drawn - self.start, 1e-9)
    of = f" / {self.total / 1e6:.1f} MB  {100 * self.done / max(self.total, 1):3.0f}%" \
        if self.total else " MB"
    self.stream.write(f"\r{self.label}  {self.done / 1e6:.1f}{of}  {rate / 1e6:.1f} MB/s")
    self.stream.flush()


def as_json(checkpoint: Checkpoint) -> dict[str, Any]:
  return {"name": checkpoint.name, "model": checkpoint.model,
          "architecture": checkpoint.architecture, "upstream": checkpoint.upstream,
          "fine_tuned": checkpoint.fine_tuned, "num_classes": checkpoint.num_classes,
          "size_bytes": checkpoint.size, "url": checkpoint.url(),
          "published": [{"metric": r.metric, "value": r.value, "source": SOURCES[r.source]}
                        for r in checkpoint.published]}


COLUMNS = ("name", "architecture", "upstream", "fine-tuned on", "head", "file size",
           "published (%)")


def rows(catalogue: Mapping[str, Checkpoint] = CATALOGUE) -> list[tuple[str, ...]]:
  """The `list` table, one tuple of strings (COLUMNS) per checkpoint."""
  return [(c.name, c.architecture, c.upstream, c.fine_tuned or "-", f"{c.num_classes} classes",
           f"{c.size / 1e6:.1f} MB" if c.size else "unknown",
           _published(c.published))
          for c in catalogue.values()]


def _published(results: Sequence[Result]) -> str:
  """`VTAB-1k mean top-1 70.6 [paper], 73.51 [big_transfer]`: one metric named once."""
  by_metric: dict[str, list[str]] = {}
  for r in results:
    by_metric.setdefault(r.metric, []).append(f"{r.value:g} [{r.source}]")
  return "; ".join(f"{metric} {', '.join(values)}" for metric, values in by_metric.items()) or "-"


def markdown(catalogue: Mapping[str, Checkpoint] = CATALOGUE) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |" for row in rows(catalogue)]
  return "\n".join(lines)


def list_checkpoints(args: argparse.Namespace, catalogue: Mapping[str, Checkpoint]) -> None:
  if args.json:
    print(json.dumps([as_json(c) for c in catalogue.values()], indent=2))
    return
  if args.markdown:
    print(markdown(catalogue))
    return
  table = [COLUMNS, *rows(catalogue)]
  widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
  for row in table:
    print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
  print(f"\nfiles: {DEFAULT_BASE_URL}/NAME.npz; fetch one with "
        f"{COMMAND} download NAME [--dir=DIR] (default {default_cache_dir()})")
  for key, text in SOURCES.items():
    print(f"[{key}] {text}")


def download_checkpoint(args: argparse.Namespace, catalogue: Mapping[str, Checkpoint]) -> None:
  try:
    print(download(args.name, args.dir, args.base_url, catalogue=catalogue))
  except NetworkError as e:  # Transient: exit 1, and the .part file resumes on a rerun.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(entry.EXIT_FAILED)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=COMMAND, description="The released BiT checkpoints.")
  commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
  listing = commands.add_parser("list", help="the released checkpoints")
  form = listing.add_mutually_exclusive_group()
  form.add_argument("--json", action="store_true", help="a JSON list, one object per file")
  form.add_argument("--markdown", action="store_true", help="a Markdown table")
  listing.set_defaults(job=list_checkpoints)
  fetching = commands.add_parser(
      "download", help="fetch, resume and verify NAME.npz; exit 2: bad input or a file that "
                       "fails verification, 1: network failure (rerun to resume)")
  fetching.add_argument("name", metavar="NAME", help="a name from `list`, e.g. BiT-M-R50x1")
  fetching.add_argument("--dir", default=None,
                        help=f"where NAME.npz goes; default ${CACHE_ENV} or {DEFAULT_CACHE_DIR}")
  fetching.add_argument("--base_url", default=DEFAULT_BASE_URL,
                        help="where the files are: {base_url}/NAME.npz")
  fetching.set_defaults(job=download_checkpoint)
  return p


def main(argv: Sequence[str] | None = None,
         catalogue: Mapping[str, Checkpoint] = CATALOGUE) -> None:
  args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
  entry.run(lambda: args.job(args, catalogue))


if __name__ == "__main__":
  # Verification only needs shapes: keep JAX off any accelerator (and its memory).
  jax.config.update("jax_platforms", "cpu")
  main()
