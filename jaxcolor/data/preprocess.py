"""Decoding and per-image preprocessing: photo bytes -> uint8 training maps.

An example is a dict of uint8 numpy arrays at `image_size` x `image_size`:

  'rgb'      (S, S, 3)  the photo, RGB.
  'gray'     (S, S, 1)  cv2 BGR->GRAY of the same pixels (0.299 R + 0.587 G
                        + 0.114 B).
  'edge'     (S, S, 1)  cv2.Canny(gray, canny_low, canny_high): 0 or 255.
  'saliency' (S, S, 1)  cv2.saliency static saliency of the photo (given as
                        BGR, as cv2 expects): spectral residual by default,
                        fine grained if `saliency == 'fine_grained'`. cv2
                        returns float32 in [0, 1]; stored as round(x * 255).

The model sees `normalize(x)`: float32 in [-1, 1].
"""

import dataclasses
import struct
from typing import Any, Optional

import cv2
import numpy as np

from jaxcolor.runtime import files

SALIENCY_METHODS = ('spectral_residual', 'fine_grained')
# Larger photo files are skipped unread (config.data.max_file_bytes).
DEFAULT_MAX_FILE_BYTES = 512 * 2**20
KEYS = ('rgb', 'gray', 'edge', 'saliency')


class BadImageError(ValueError):
  """A file that cannot be used as a training photo; `reason` says why."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason

  @property
  def kind(self) -> str:
    """The reason without details, for counting: e.g. 'truncated JPEG'."""
    return self.reason.split(' (')[0].split(':')[0]


@dataclasses.dataclass(frozen=True)
class Options:
  """The preprocessing settings of `config.data` (a picklable copy)."""
  image_size: int = 64
  canny_low: int = 100
  canny_high: int = 200
  saliency: str = 'spectral_residual'
  random_crop: bool = False
  random_flip: bool = False
  max_image_pixels: int = 100_000_000
  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES

  @classmethod
  def from_config(cls, data_config: Any) -> 'Options':
    """Reads the fields above from `config.data` (or any object with them);
    a key that a config saved by an older version lacks keeps its default."""
    if isinstance(data_config, cls):
      return data_config
    opts = cls(**{f.name: getattr(data_config, f.name, f.default)
                  for f in dataclasses.fields(cls)})
    if opts.saliency not in SALIENCY_METHODS:
      raise ValueError(f'config.data.saliency={opts.saliency!r}; expected one '
                       f'of {SALIENCY_METHODS}')
    if opts.image_size <= 0:
      raise ValueError(
          f'config.data.image_size must be positive, got {opts.image_size}')
    return opts


def normalize(x):
  """uint8 array (numpy or jax) -> float32 in [-1, 1] (x / 127.5 - 1)."""
  return x.astype('float32') / 127.5 - 1.0


def to_unit(x):
  """[-1, 1] (numpy or jax; the model's image range) -> [0, 1], unclipped."""
  return (x + 1.0) * 0.5


# ---------------------------------------------------------------- headers
# The signatures of every format this cv2 build decodes (its decoders pick a
# file by these bytes, not by its name). A file that starts with none of
# them is not decoded at all, so every decoded image had its size read from
# its header first.
_PNG = b'\x89PNG\r\n\x1a\n'
_JP2 = b'\x00\x00\x00\x0cjP  \r\n\x87\n'
_J2K = b'\xff\x4f\xff\x51'
_SUN = b'\x59\xa6\x6a\x95'
_TIFF = (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+')  # classic, BigTIFF


def image_format(data: bytes) -> Optional[str]:
  """The image format named by the file's first bytes, or None.

  One of 'JPEG', 'PNG', 'BMP', 'WebP', 'TIFF', 'GIF', 'JPEG 2000', 'PNM',
  'PAM', 'PFM', 'Sun raster', 'Radiance HDR', 'AVIF': the formats cv2
  decodes here.
  """
  head = data[:32]
  if head.startswith(b'\xff\xd8\xff'):
    return 'JPEG'
  if head.startswith(_PNG):
    return 'PNG'
  if head.startswith(b'BM'):
    return 'BMP'
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'WebP'
  if head[:4] in _TIFF:
    return 'TIFF'
  if head[:6] in (b'GIF87a', b'GIF89a'):
    return 'GIF'
  if head.startswith(_JP2) or head.startswith(_J2K):
    return 'JPEG 2000'
  if head.startswith(_SUN):
    return 'Sun raster'
  if head.startswith((b'#?RADIANCE', b'#?RGBE')):
    return 'Radiance HDR'
  if len(head) >= 3 and head[:1] == b'P' and head[2:3].isspace():
    kind = head[1:2]
    if kind in b'123456':
      return 'PNM'
    if kind == b'7':
      return 'PAM'
    if kind in (b'F', b'f'):
      return 'PFM'
  if head[4:8] == b'ftyp' and _avif_brand(data):
    return 'AVIF'
  return None


def _jpeg_info(data: bytes) -> tuple[Optional[tuple[int, int]], Optional[int]]:
  """(width, height) from the first SOFn marker, and the first SOS offset."""
  i, n, size = 2, len(data), None
  while i + 4 <= n:
    if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips them
      i = data.find(b'\xff', i)
      if i < 0:
        return size, None
      continue
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte
      i += 1
      continue
    if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # no length field
      i += 2
      continue
    (length,) = struct.unpack('>H', data[i + 2:i + 4])
    if marker == 0xDA:  # start of scan: entropy-coded data follows
      return size, i
    if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
        and size is None and i + 9 <= n):
      h, w = struct.unpack('>HH', data[i + 5:i + 9])
      size = (w, h)
    i += 2 + length
  return size, None


def _tiff_size(data: bytes) -> Optional[tuple[int, int]]:
  """ImageWidth and ImageLength of the first IFD (the page cv2 decodes)."""
  e = '<' if data[:2] == b'II' else '>'
  big = data[2:4] in (b'+\x00', b'\x00+')
  if big:
    (ifd,) = struct.unpack(e + 'Q', data[8:16])
    (count,) = struct.unpack(e + 'Q', data[ifd:ifd + 8])
    first, entry, value_at = ifd + 8, 20, 12
  else:
    (ifd,) = struct.unpack(e + 'I', data[4:8])
    (count,) = struct.unpack(e + 'H', data[ifd:ifd + 2])
    first, entry, value_at = ifd + 2, 12, 8
  found = {}
  for k in range(min(count, 4096)):
    at = first + k * entry
    tag, kind = struct.unpack(e + 'HH', data[at:at + 4])
    if tag in (256, 257):
      v = at + value_at
      # SHORT, LONG, LONG8 (BigTIFF)
      fmt = {3: 'H', 4: 'I', 16: 'Q'}.get(kind)
      if fmt is None:
        return None
      (found[tag],) = struct.unpack(e + fmt, data[v:v + struct.calcsize(fmt)])
  if 256 in found and 257 in found:
    return found[256], found[257]
  return None


def _pnm_tokens(data: bytes, count: int) -> list[bytes]:
  """The first `count` whitespace-separated header tokens after the magic
  number ('#' comments skipped)."""
  tokens, i, n = [], 2, min(len(data), 4096)
  while len(tokens) < count and i < n:
    c = data[i:i + 1]
    if c.isspace():
      i += 1
    elif c == b'#':
      j = data.find(b'\n', i)
      i = n if j < 0 else j + 1
    else:
      j = i
      while j < n and not data[j:j + 1].isspace() and data[j:j + 1] != b'#':
        j += 1
      tokens.append(data[i:j])
      i = j
  return tokens


def _pam_size(data: bytes) -> Optional[tuple[int, int]]:
  """WIDTH and HEIGHT of a PAM header (lines up to ENDHDR)."""
  fields = {}
  for line in data[:4096].split(b'\n')[1:]:
    parts = line.split()
    if parts[:1] == [b'ENDHDR']:
      break
    if len(parts) == 2:
      fields[parts[0]] = parts[1]
  if b'WIDTH' in fields and b'HEIGHT' in fields:
    return int(fields[b'WIDTH']), int(fields[b'HEIGHT'])
  return None


def _hdr_size(data: bytes) -> Optional[tuple[int, int]]:
  """From the resolution line after the header's blank line: '-Y H +X W'."""
  head = data[:65536]
  end = head.find(b'\n\n')
  if end < 0:
    return None
  parts = head[end + 2:].split(b'\n', 1)[0].split()
  if len(parts) != 4:
    return None
  dims = {parts[0][1:2]: int(parts[1]), parts[2][1:2]: int(parts[3])}
  if set(dims) != {b'X', b'Y'}:
    return None
  return dims[b'X'], dims[b'Y']


def _boxes(data: bytes, start: int, end: int):
  """(type, payload start, payload end) of the ISO BMFF / JP2 boxes in
  data[start:end]."""
  i = start
  while i + 8 <= end:
    size, kind = struct.unpack('>I4s', data[i:i + 8])
    head = 8
    if size == 1:
      (size,) = struct.unpack('>Q', data[i + 8:i + 16])
      head = 16
    elif size == 0:
      size = end - i
    if size < head:
      return
    yield kind, i + head, min(i + size, end)
    i += size


def _jp2_size(data: bytes) -> Optional[tuple[int, int]]:
  """From the JP2 header box's 'ihdr', or a bare codestream's SIZ."""
  if data.startswith(_J2K):  # a bare codestream: the SIZ segment
    xs, ys, xo, yo = struct.unpack('>IIII', data[8:24])
    return xs - xo, ys - yo
  for kind, a, b in _boxes(data, 0, len(data)):
    if kind == b'jp2h':
      for sub, c, _ in _boxes(data, a, b):
        if sub == b'ihdr':
          h, w = struct.unpack('>II', data[c:c + 8])
          return w, h
  return None


def _avif_brand(data: bytes) -> bool:
  """True if the leading 'ftyp' box names an AVIF brand."""
  (size,) = struct.unpack('>I', data[:4])
  brands = data[8:12] + data[16:min(size, 4096)]
  return any(brands[k:k + 4] in (b'avif', b'avis')
             for k in range(0, len(brands) - 3, 4))


def _avif_size(data: bytes) -> Optional[tuple[int, int]]:
  """The largest 'ispe' (image spatial extent) of meta/iprp/ipco."""
  best = None
  for kind, a, b in _boxes(data, 0, len(data)):
    if kind != b'meta':
      continue
    for sub, c, d in _boxes(data, a + 4, b):  # meta is a full box
      if sub != b'iprp':
        continue
      for prop, e, f in _boxes(data, c, d):
        if prop != b'ipco':
          continue
        for item, g, _ in _boxes(data, e, f):
          if item == b'ispe':
            w, h = struct.unpack('>II', data[g + 4:g + 12])
            if best is None or w * h > best[0] * best[1]:
              best = (w, h)
  return best


def image_size_from_header(data: bytes) -> Optional[tuple[int, int]]:
  """(width, height) read from the header; None if unknown or unreadable.

  Cheap: no pixel data is decoded, so oversized files can be refused before
  they are decoded. Reads every format of `image_format`.
  """
  fmt = image_format(data)
  try:
    if fmt == 'PNG':
      if data[12:16] != b'IHDR':
        return None
      return struct.unpack('>II', data[16:24])
    if fmt == 'JPEG':
      return _jpeg_info(data)[0]
    if fmt == 'BMP':
      (header,) = struct.unpack('<I', data[14:18])
      if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack('<HH', data[18:22])
      w, h = struct.unpack('<ii', data[18:26])
      return w, abs(h)
    if fmt == 'WebP':
      chunk = data[12:16]
      if chunk == b'VP8X':
        w = int.from_bytes(data[24:27], 'little') + 1
        h = int.from_bytes(data[27:30], 'little') + 1
        return w, h
      if chunk == b'VP8 ':
        w, h = struct.unpack('<HH', data[26:30])
        return w & 0x3FFF, h & 0x3FFF
      if chunk == b'VP8L':
        b = int.from_bytes(data[21:25], 'little')
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
      return None
    if fmt == 'TIFF':
      return _tiff_size(data)
    if fmt == 'GIF':
      return struct.unpack('<HH', data[6:10])
    if fmt == 'JPEG 2000':
      return _jp2_size(data)
    if fmt == 'Sun raster':
      return struct.unpack('>II', data[4:12])
    if fmt == 'Radiance HDR':
      return _hdr_size(data)
    if fmt in ('PNM', 'PFM'):
      w, h = _pnm_tokens(data, 2)
      return int(w), int(h)
    if fmt == 'PAM':
      return _pam_size(data)
    if fmt == 'AVIF':
      return _avif_size(data)
  except (struct.error, ValueError):
    return None
  return None


# ---------------------------------------------------------------- decoding
def _to_uint8(img: np.ndarray) -> np.ndarray:
  if img.dtype == np.uint8:
    return img
  if img.dtype == np.uint16:
    return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
  if img.dtype in (np.float32, np.float64):
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
  raise BadImageError(f'unsupported pixel type {img.dtype}')


def decode_image(data: bytes, *, max_pixels: Optional[int] = None,
                 min_side: Optional[int] = None) -> np.ndarray:
  """Image file bytes -> RGB uint8 (H, W, 3).

  Grayscale is replicated to 3 channels; alpha is composited over white;
  16-bit and float images are scaled to 8 bit; CMYK JPEGs are converted by
  cv2; JPEG EXIF orientation is applied. A JPEG without an end-of-image
  marker after its first scan is refused as truncated (cv2 would hand back
  a partly grey image).

  Every format cv2 decodes (`image_format`) has its size read from its
  header first; bytes of no such format, or without a readable size, are
  refused without decoding.

  Args:
    data: the file's bytes.
    max_pixels: refuse images with more pixels (read from the header before
      decoding).
    min_side: if given, a large JPEG may be decoded at 1/2, 1/4 or 1/8 scale
      (in the DCT domain, much faster) as long as its shorter side stays at
      least `min_side`.

  Raises:
    BadImageError: with the reason the bytes are not a usable image.
  """
  if not data:
    raise BadImageError('empty file (0 bytes)')
  fmt = image_format(data)
  if fmt is None:
    raise BadImageError('not a decodable image (its first bytes are not '
                        'those of an image format cv2 reads)')
  size = image_size_from_header(data)
  if size is None:
    raise BadImageError(f'not a decodable image (no readable size in its '
                        f'{fmt} header)')
  w, h = size
  if w <= 0 or h <= 0:
    raise BadImageError(f'bad size {w}x{h} in header')
  if max_pixels and w * h > max_pixels:
    raise BadImageError(
        f'too large: {w}x{h} = {w * h} pixels > '
        f'max_image_pixels={max_pixels}')
  buf = np.frombuffer(data, np.uint8)
  is_jpeg = fmt == 'JPEG'
  if is_jpeg:
    _, sos = _jpeg_info(data)
    if sos is None or data.rfind(b'\xff\xd9') < sos:
      raise BadImageError('truncated JPEG (no end-of-image marker)')
    flag = cv2.IMREAD_COLOR
    if min_side:
      for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8),
                              (4, cv2.IMREAD_REDUCED_COLOR_4),
                              (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if min(size) // factor >= min_side:
          flag = reduced
          break
  else:
    flag = cv2.IMREAD_UNCHANGED
  try:
    img = cv2.imdecode(buf, flag)
  except cv2.error as e:
    raise BadImageError(f'cv2 cannot decode it ({str(e).strip()[-80:]})') from e
  if img is None:
    raise BadImageError('not a decodable image (corrupt, truncated or not an '
                        'image format cv2 reads)')
  if img.ndim not in (2, 3) or img.size == 0:
    raise BadImageError(f'unexpected decoded shape {img.shape}')
  # The header said otherwise (e.g. a GIF frame outside its screen): still
  # refused, though only after the decode.
  if max_pixels and img.shape[0] * img.shape[1] > max_pixels:
    raise BadImageError(f'too large: {img.shape[1]}x{img.shape[0]} pixels > '
                        f'max_image_pixels={max_pixels}')
  img = _to_uint8(img)
  if img.ndim == 2 or img.shape[2] == 1:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
  if img.shape[2] == 3:
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
  if img.shape[2] == 4:
    bgr = img[..., :3].astype(np.float32)
    alpha = img[..., 3:].astype(np.float32) / 255.0
    out = np.round(bgr * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
  raise BadImageError(f'unexpected channel count {img.shape[2]}')


def read_file(path: str, max_bytes: Optional[int] = None) -> bytes:
  """The bytes of a regular file of at most `max_bytes` (None: the default
  `DEFAULT_MAX_FILE_BYTES`).

  FIFOs, sockets, devices and links to them are refused from their `stat`,
  never opened (`files.read_regular`).

  Raises:
    BadImageError: not a regular file, too large, or unreadable (never
      OSError).
  """
  try:
    return files.read_regular(path, max_bytes or DEFAULT_MAX_FILE_BYTES)
  except ValueError as e:
    raise BadImageError(str(e)) from e
  except OSError as e:
    raise BadImageError(f'unreadable ({e.strerror or e})') from e


# ---------------------------------------------------------------- maps
def resize_and_crop(rgb: np.ndarray, size: int,
                    rng: Optional[np.random.Generator] = None) -> np.ndarray:
  """Square crop of the shorter side (centre, or random with `rng`), resized.

  Cropping first and resizing the square equals resizing the shorter side to
  `size` and cropping, up to sub-pixel placement. Shrinking uses INTER_AREA,
  growing INTER_CUBIC.
  """
  h, w = rgb.shape[:2]
  side = min(h, w)
  if rng is None:
    top, left = (h - side) // 2, (w - side) // 2
  else:
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
  square = rgb[top:top + side, left:left + side]
  if side == size:
    return np.ascontiguousarray(square)
  interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
  return cv2.resize(square, (size, size), interpolation=interp)


def saliency_map(rgb: np.ndarray, method: str = 'spectral_residual'
                 ) -> np.ndarray:
  """cv2.saliency static saliency of an RGB uint8 image -> uint8 (H, W, 1)."""
  if method == 'spectral_residual':
    algo = cv2.saliency.StaticSaliencySpectralResidual_create()
  elif method == 'fine_grained':
    algo = cv2.saliency.StaticSaliencyFineGrained_create()
  else:
    raise ValueError(f'config.data.saliency={method!r}; expected one of '
                     f'{SALIENCY_METHODS}')
  ok, sal = algo.computeSaliency(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  if not ok or sal is None:
    sal = np.zeros(rgb.shape[:2], np.float32)
  if sal.dtype != np.uint8:
    sal = np.round(np.clip(sal, 0.0, 1.0) * 255.0).astype(np.uint8)
  return sal.reshape(rgb.shape[:2] + (1,))


def compute_maps(rgb: np.ndarray, opts: Options) -> dict[str, np.ndarray]:
  """RGB uint8 (S, S, 3) -> the example dict (see the module docstring)."""
  gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
  edge = cv2.Canny(gray, opts.canny_low, opts.canny_high)
  return {
      'rgb': rgb,
      'gray': gray[..., None],
      'edge': edge[..., None],
      'saliency': saliency_map(rgb, opts.saliency),
  }


def flip(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Mirrors every (H, W, C) map of an example left-right."""
  return {k: np.ascontiguousarray(v[:, ::-1]) if v.ndim == 3 else v
          for k, v in example.items()}


def preprocess_image(rgb: np.ndarray, data_config: Any,
                     rng: Optional[np.random.Generator] = None
                     ) -> dict[str, np.ndarray]:
  """Decoded RGB uint8 (H, W, 3) of any size -> the example dict at S x S.

  `rng` is used only for the options enabled in `data_config`
  (`random_crop`: the square's position; `random_flip`: a coin). The flip
  is applied after the maps are computed, so prepared records flipped at
  read time equal this path exactly.
  """
  opts = Options.from_config(data_config)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f'expected RGB uint8 (H, W, 3), got {rgb.dtype} '
                     f'{rgb.shape}')
  crop_rng = rng if (opts.random_crop and rng is not None) else None
  example = compute_maps(resize_and_crop(rgb, opts.image_size, crop_rng), opts)
  if opts.random_flip and rng is not None and rng.random() < 0.5:
    example = flip(example)
  return example


def load_example(path: str, data_config: Any,
                 rng: Optional[np.random.Generator] = None
                 ) -> dict[str, np.ndarray]:
  """File -> example dict; BadImageError for anything unusable."""
  opts = Options.from_config(data_config)
  rgb = decode_image(read_file(path, opts.max_file_bytes),
                     max_pixels=opts.max_image_pixels,
                     min_side=opts.image_size)
  return preprocess_image(rgb, opts, rng)
