"""Real image files for tests: good photos in odd formats, and broken files.

Everything is derived from the bundled sample photos and written to a
folder the test owns (pytest's tmp_path).
"""

import io
import os
import shutil

import cv2
import numpy as np
from PIL import Image

SAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'jaxcolor', 'data', 'samples')


def sample_files() -> list[str]:
  return sorted(os.path.join(SAMPLES_DIR, n) for n in os.listdir(SAMPLES_DIR)
                if n.endswith('.jpg'))


def sample_rgb(i: int = 0) -> np.ndarray:
  """RGB uint8 of the i-th sample photo (about 256 x 171)."""
  return cv2.cvtColor(cv2.imread(sample_files()[i]), cv2.COLOR_BGR2RGB)


def copy_samples(folder: str, n: int, start: int = 0) -> list[str]:
  """Copies n sample photos into `folder`; returns their names."""
  os.makedirs(folder, exist_ok=True)
  names = []
  for path in sample_files()[start:start + n]:
    names.append(os.path.basename(path))
    shutil.copy(path, os.path.join(folder, names[-1]))
  return names


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
  ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, quality])
  assert ok
  return buf.tobytes()


def png_bytes(img: np.ndarray) -> bytes:
  """PNG of an RGB, RGBA or gray array (uint8 or uint16), channels as given."""
  if img.ndim == 3 and img.shape[2] == 3:
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
  elif img.ndim == 3 and img.shape[2] == 4:
    img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
  ok, buf = cv2.imencode('.png', img)
  assert ok
  return buf.tobytes()


def write(path: str, data: bytes) -> str:
  with open(path, 'wb') as f:
    f.write(data)
  return path


# ---------------------------------------------------------------- odd but good
def gray_png(rgb):
  return png_bytes(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def rgba_png(rgb):
  """RGBA; the left quarter fully transparent (composites to white)."""
  alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
  alpha[:, :rgb.shape[1] // 4] = 0
  return png_bytes(np.concatenate([rgb, alpha], axis=-1))


def png16(rgb):
  return png_bytes(rgb.astype(np.uint16) * 257)


def cmyk_jpeg(rgb):
  buf = io.BytesIO()
  Image.fromarray(rgb).convert('CMYK').save(buf, 'JPEG', quality=90)
  return buf.getvalue()


def tiny_jpeg(rgb):
  """A 10 (wide) x 7 image, smaller than any training size."""
  return jpeg_bytes(cv2.resize(rgb, (10, 7), interpolation=cv2.INTER_AREA))


def webp(rgb):
  ok, buf = cv2.imencode('.webp', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  assert ok
  return buf.tobytes()


def bmp(rgb):
  ok, buf = cv2.imencode('.bmp', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  assert ok
  return buf.tobytes()


GOOD_KINDS = {
    'gray.png': gray_png, 'rgba.png': rgba_png, 'deep16.png': png16,
    'cmyk.jpg': cmyk_jpeg, 'tiny.jpg': tiny_jpeg, 'photo.webp': webp,
    'photo.BMP': bmp,
}


# ---------------------------------------------------------------- bad
def truncated_jpeg(rgb):
  data = jpeg_bytes(rgb)
  return data[:int(len(data) * 0.8)]


def truncated_png(rgb):
  data = png_bytes(rgb)
  return data[:len(data) // 2]


BAD_KINDS = {
    'empty.jpg': lambda rgb: b'',
    'truncated.jpg': truncated_jpeg,
    'truncated.png': truncated_png,
    'text.jpg': lambda rgb: b'This is a text file, not a JPEG.\n' * 20,
}


def make_unreadable(path: str) -> str:
  """A file that cannot be opened: mode 000, or (as root, who can read
  anything) a symlink to a missing file."""
  write(path, jpeg_bytes(sample_rgb(0)))
  os.chmod(path, 0)
  try:
    with open(path, 'rb'):
      pass
  except PermissionError:
    return 'chmod 000'
  os.remove(path)
  os.symlink(path + '.missing-target', path)
  return 'broken symlink'


def make_mixed_folder(folder: str, n_good: int = 4
                      ) -> tuple[list[str], list[str]]:
  """Sample photos + every odd-but-good kind + every bad kind.

  Also adds a sub-folder named like an image (not a file, so not listed).
  Returns (good names, bad names), relative to `folder`.
  """
  good = copy_samples(folder, n_good)
  rgb = sample_rgb(n_good)
  for name, make in GOOD_KINDS.items():
    write(os.path.join(folder, name), make(rgb))
    good.append(name)
  bad = []
  for name, make in BAD_KINDS.items():
    write(os.path.join(folder, name), make(rgb))
    bad.append(name)
  make_unreadable(os.path.join(folder, 'unreadable.jpg'))
  bad.append('unreadable.jpg')
  os.makedirs(os.path.join(folder, 'folder.jpg'))
  return sorted(good), sorted(bad)


def header_only_png(width: int, height: int) -> bytes:
  """A PNG signature and IHDR claiming width x height, and no pixels (a
  decompression-bomb probe: the size is known before anything decodes)."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  chunk = b'IHDR' + ihdr
  return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', len(ihdr)) + chunk +
          struct.pack('>I', zlib.crc32(chunk) & 0xffffffff))
