"""Preprocessing ops, composed from a string such as
`"decode|inception_crop(224)|flip_lr|value_range(-1,1)|onehot(1000)"`.

Each op is a registered `get_<name>(*args, **kwargs)` returning
`fn(data) -> data` on the dict of tensors of ONE example (big_vision's pp/
design). Ops never modify the caller's dict. Random ops draw from the example's
`"_rng"` (a `[2]` int64 stateless seed attached by `input_pipeline.streams`) and
pass a fresh split on, so a stream is reproducible and can resume at any step;
with no `"_rng"` (eager use) they draw a fresh random seed.

Images stay uint8 through crops and resizes (which round back to the input
dtype) and become float32 only in `value_range`: less host memory and less to
copy to the device.
"""
import ast
import difflib
import inspect
from typing import Callable

import tensorflow as tf

from input_pipeline.errors import InputError

Data = dict[str, tf.Tensor]
OPS: dict[str, Callable[..., Callable[[Data], Data]]] = {}
RESIZE_METHODS = ("area", "bicubic", "bilinear", "gaussian", "lanczos3",
                  "lanczos5", "mitchellcubic", "nearest")


def register(get_op):
  """Registers `get_<name>` as the op `<name>`."""
  OPS[get_op.__name__.removeprefix("get_")] = get_op
  return get_op


def get_preprocess_fn(pp: str) -> Callable[[Data], Data]:
  """Parses `"op1|op2(args)|..."` into one function on an example dict.

  Raises `InputError` now (not inside tf.data) for an unknown op, bad syntax or
  wrong arguments, and at trace time for a key the example lacks.
  """
  specs = [s.strip() for s in pp.split("|") if s.strip()]
  ops = [(spec, _parse_op(spec)) for spec in specs]

  # do_not_convert: autograph would rewrite our one-line InputError into a
  # multi-line StagingError; the ops have no Python control flow on tensors.
  @tf.autograph.experimental.do_not_convert
  def preprocess(data: Data) -> Data:
    data = dict(data)
    for spec, op in ops:
      try:
        data = op(data)
      except InputError:
        raise
      except KeyError as e:
        raise InputError(
            f"preprocessing op {spec!r} needs key {e.args[0]!r}; the example "
            f"has keys: {', '.join(sorted(data))}") from None
      except (TypeError, ValueError) as e:  # Argument types, static shapes.
        shapes = ", ".join(f"{k} {tf.convert_to_tensor(v).shape}"
                           for k, v in sorted(data.items()))
        raise InputError(f"preprocessing op {spec!r} cannot run on an "
                         f"example of {shapes}: {e}") from None
    return data

  return preprocess


def _parse_op(spec: str) -> Callable[[Data], Data]:
  """`"resize(224, method='area')"` -> `get_resize(224, method='area')`."""
  syntax = (f"cannot parse preprocessing op {spec!r}: write name or "
            "name(literal, ..., key=literal), e.g. resize(224)")
  try:
    node = ast.parse(spec, mode="eval").body
  except SyntaxError:
    raise InputError(syntax) from None
  if isinstance(node, ast.Name):
    name, args, kwargs = node.id, [], {}
  elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    name = node.func.id
    try:  # literal_eval: a pp string must never run code.
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
      raise InputError(syntax) from None
    if None in kwargs:
      raise InputError(syntax)
  else:
    raise InputError(syntax)
  if name not in OPS:
    close = difflib.get_close_matches(name, OPS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InputError(f"unknown preprocessing op {name!r}{hint}; valid ops: "
                     f"{', '.join(sorted(OPS))}")
  get_op = OPS[name]
  try:
    inspect.signature(get_op).bind(*args, **kwargs)
  except TypeError as e:
    raise InputError(f"wrong arguments for preprocessing op {spec!r} ({e}); "
                     f"expected {name}{_signature(get_op)}") from None
  return get_op(*args, **kwargs)


def _signature(get_op) -> str:
  """`(size, method='bilinear', ...)`, without type annotations."""
  sig = inspect.signature(get_op)
  return str(sig.replace(parameters=[
      p.replace(annotation=p.empty) for p in sig.parameters.values()],
                         return_annotation=sig.empty))


# ---- Helpers shared by the ops (private: the ops are the public surface). ----


def _hw(size, op: str) -> tuple[int, int]:
  """`224` or `(224, 160)` -> `(224, 160)`, validated."""
  hw = (size, size) if isinstance(size, int) else size
  if (not isinstance(hw, (tuple, list)) or len(hw) != 2 or not all(
      isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in hw)):
    raise InputError(f"{op}: size must be a positive int or (height, width); "
                     f"got {size!r}")
  return tuple(hw)


def _check_method(method: str, op: str):
  if method not in RESIZE_METHODS:
    raise InputError(f"{op}: unknown resize method {method!r}; valid: "
                     f"{', '.join(RESIZE_METHODS)}")


def _next_seed(data: Data) -> tuple[tf.Tensor, Data]:
  """Splits the example's `_rng` into a seed for this op and the rest."""
  rng = data.get("_rng")
  if rng is None:
    rng = tf.random.uniform([2], maxval=2**62, dtype=tf.int64)
  seed, rest = tf.unstack(tf.random.experimental.stateless_split(rng, 2))
  return seed, ({**data, "_rng": rest} if "_rng" in data else data)


def _cast_like(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  if dtype.is_integer:  # round, don't truncate, and don't wrap around.
    return tf.saturate_cast(tf.round(image), dtype)
  return tf.cast(image, dtype)


def _resize(image, hw, method, antialias):
  out = tf.image.resize(image, hw, method=method, antialias=antialias)
  return _cast_like(out, image.dtype)


def _channels(image: tf.Tensor, channels: int, op: str) -> tf.Tensor:
  """A decoded image with 1 or 3 channels (gray is tiled, alpha dropped)."""
  have = image.shape[-1]
  if channels == 0 or have == channels:
    return image
  if channels == 3 and have in (1, 4):
    return tf.tile(image, [1, 1, 3]) if have == 1 else image[..., :3]
  if channels == 1 and have in (3, 4):
    return tf.image.rgb_to_grayscale(image[..., :3])
  raise InputError(f"{op}: cannot turn an image with {have} channels into "
                   f"{channels}; images must have 1, 3 or 4 channels")


# ---- The ops. ----


@register
def get_decode(channels: int = 3, key: str = "image"):
  """Decodes JPEG/PNG/GIF/BMP/WebP bytes to uint8 [h, w, channels].

  channels=3 (default) tiles grayscale and drops alpha, so 1- and 4-channel
  files batch with RGB ones; 0 keeps the file's channels. An image TFDS already
  decoded (uint8 tensor) is passed through with the same channel conversion.
  """
  if channels not in (0, 1, 3):
    raise InputError(f"decode: channels must be 0 (as stored), 1 or 3; got "
                     f"{channels!r}")

  def _decode(data):
    image = data[key]
    if image.dtype == tf.string:
      image = tf.io.decode_image(image, channels=channels,
                                 expand_animations=False)
    else:
      image = _channels(image, channels, "decode")
    return {**data, key: image}
  return _decode


@register
def get_to_rgb(key: str = "image"):
  """Decoded grayscale -> 3 channels by tiling; RGBA -> RGB, alpha dropped."""
  return lambda data: {**data, key: _channels(data[key], 3, "to_rgb")}


@register
def get_resize(size, method: str = "bilinear", antialias: bool = False,
               key: str = "image"):
  """Resizes to `size` (int or (h, w)), ignoring the aspect ratio."""
  hw = _hw(size, "resize")
  _check_method(method, "resize")
  return lambda data: {**data, key: _resize(data[key], hw, method, antialias)}


@register
def get_resize_small(smaller_size: int, method: str = "bilinear",
                     antialias: bool = False, key: str = "image"):
  """Resizes so the shorter side is `smaller_size`, keeping the aspect ratio."""
  _hw(smaller_size, "resize_small")
  _check_method(method, "resize_small")

  def _resize_small(data):
    image = data[key]
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = smaller_size / tf.reduce_min(hw)
    # max(): rounding must never leave the short side below smaller_size.
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), smaller_size)
    return {**data, key: _resize(image, new_hw, method, antialias)}
  return _resize_small


@register
def get_central_crop(size, key: str = "image"):
  """Crops the central `size` (int or (h, w)) window."""
  h, w = _hw(size, "central_crop")

  def _central_crop(data):
    image = data[key]
    if any(have is not None and have < want
           for have, want in zip(image.shape[:2], (h, w))):
      raise ValueError("image smaller than the crop; resize first")
    shape = tf.shape(image)
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    return {**data, key: tf.image.crop_to_bounding_box(image, top, left, h, w)}
  return _central_crop


@register
def get_random_crop(size, key: str = "image"):
  """Crops a uniformly placed `size` (int or (h, w)) window."""
  h, w = _hw(size, "random_crop")

  def _random_crop(data):
    seed, data = _next_seed(data)
    image = data[key]
    crop = tf.image.stateless_random_crop(
        image, tf.stack([h, w, tf.shape(image)[-1]]), seed=seed)
    crop.set_shape([h, w, image.shape[-1]])
    return {**data, key: crop}
  return _random_crop


def _check_inception(area_min, area_max, aspect_min, aspect_max, method, op):
  if not 0 < area_min <= area_max <= 1:
    raise InputError(f"{op}: need 0 < area_min <= area_max <= 1 (fractions of "
                     f"the image area); got {area_min}, {area_max}")
  if not 0 < aspect_min <= aspect_max:
    raise InputError(f"{op}: need 0 < aspect_min <= aspect_max; got "
                     f"{aspect_min}, {aspect_max}")
  _check_method(method, op)


def _sample_crop(image_shape, seed, area_min, area_max, aspect_min, aspect_max):
  """Inception-style crop window: (begin, size) for tf.slice."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.zeros([0, 0, 4], tf.float32), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=(aspect_min, aspect_max),
      area_range=(area_min, area_max), use_image_if_no_bounding_boxes=True)
  return begin, size


@register
def get_inception_crop(size=None, area_min: float = 0.05, area_max: float = 1.0,
                       aspect_min: float = 3 / 4, aspect_max: float = 4 / 3,
                       method: str = "bilinear", antialias: bool = False,
                       key: str = "image"):
  """Random crop covering [area_min, area_max] of the image with aspect ratio
  in [aspect_min, aspect_max] (Szegedy et al. 2015), resized to `size` if given.
  """
  hw = None if size is None else _hw(size, "inception_crop")
  _check_inception(area_min, area_max, aspect_min, aspect_max, method,
                   "inception_crop")

  def _inception_crop(data):
    seed, data = _next_seed(data)
    image = data[key]
    begin, crop_size = _sample_crop(tf.shape(image), seed, area_min, area_max,
                                    aspect_min, aspect_max)
    crop = tf.slice(image, begin, crop_size)
    crop.set_shape([None, None, image.shape[-1]])
    if hw is not None:
      crop = _resize(crop, hw, method, antialias)
    return {**data, key: crop}
  return _inception_crop


@register
def get_decode_jpeg_and_inception_crop(
    size=None, area_min: float = 0.05, area_max: float = 1.0,
    aspect_min: float = 3 / 4, aspect_max: float = 4 / 3,
    method: str = "bilinear", antialias: bool = False, key: str = "image"):
  """`decode|inception_crop(...)` for JPEG bytes, decoding only the crop window.

  Same crop distribution as `inception_crop`; faster because most of a large
  JPEG is never decoded. JPEG only (ImageNet-style data).
  """
  hw = None if size is None else _hw(size, "decode_jpeg_and_inception_crop")
  _check_inception(area_min, area_max, aspect_min, aspect_max, method,
                   "decode_jpeg_and_inception_crop")

  def _decode_and_crop(data):
    seed, data = _next_seed(data)
    shape = tf.image.extract_jpeg_shape(data[key])
    begin, crop_size = _sample_crop(shape, seed, area_min, area_max,
                                    aspect_min, aspect_max)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    crop = tf.image.decode_and_crop_jpeg(data[key], window, channels=3)
    if hw is not None:
      crop = _resize(crop, hw, method, antialias)
    return {**data, key: crop}
  return _decode_and_crop


@register
def get_flip_lr(key: str = "image"):
  """Flips left-right with probability 1/2."""

  def _flip_lr(data):
    seed, data = _next_seed(data)
    image = tf.image.stateless_random_flip_left_right(data[key], seed=seed)
    return {**data, key: image}
  return _flip_lr


@register
def get_value_range(vmin: float = -1.0, vmax: float = 1.0, in_min: float = 0.0,
                    in_max: float = 255.0, clip_values: bool = False,
                    key: str = "image"):
  """Maps [in_min, in_max] linearly onto [vmin, vmax] as float32."""
  if in_max == in_min:
    raise InputError(f"value_range: in_min and in_max must differ; both are "
                     f"{in_min}")

  def _value_range(data):
    image = tf.cast(data[key], tf.float32)
    image = vmin + (image - in_min) * ((vmax - vmin) / (in_max - in_min))
    if clip_values:
      image = tf.clip_by_value(image, min(vmin, vmax), max(vmin, vmax))
    return {**data, key: image}
  return _value_range


@register
def get_onehot(depth: int, key: str = "label", key_result: str | None = None,
               on: float = 1.0, off: float = 0.0):
  """Integer label -> float32 one-hot of length `depth` (in place by default).

  A 1-D list of labels (multi-label data such as ImageNet-21k) gives a multi-hot
  vector: 1 at each of its labels. A label outside [0, depth) fails the stream instead of silently becoming an
  all-`off` vector (a wrong class count is a common config mistake).
  """
  if not isinstance(depth, int) or depth < 1:
    raise InputError(f"onehot: depth must be a positive int (the number of "
                     f"classes); got {depth!r}")

  def _onehot(data):
    label = data[key]
    in_range = tf.reduce_all((label >= 0) & (label < depth))
    check = tf.debugging.Assert(
        in_range, [f"onehot({depth}): label out of range [0, {depth}):", label])
    with tf.control_dependencies([check]):
      onehot = tf.one_hot(label, depth, on_value=on, off_value=off,
                          dtype=tf.float32)
    if onehot.shape.rank == 2:  # Several labels: one row each, merged.
      onehot = tf.reduce_max(onehot, axis=0)
    return {**data, key_result or key: onehot}
  return _onehot


@register
def get_keep(*keys: str):
  """Keeps only `keys` (and internal `_`-prefixed keys such as `_rng`)."""
  return lambda data: {k: v for k, v in data.items()
                       if k in keys or k.startswith("_")}


@register
def get_drop(*keys: str):
  """Removes `keys`."""
  return lambda data: {k: v for k, v in data.items() if k not in keys}


@register
def get_rename(old: str, new: str):
  """Renames key `old` to `new`, e.g. rename("label", "labels")."""

  def _rename(data):
    data = dict(data)
    data[new] = data.pop(old)
    return data
  return _rename
