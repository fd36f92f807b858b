"""Decoding and per-image maps, on real files in odd and broken formats."""

import os

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from jaxcolor.data import preprocess
import imagefactory


def _data_config(**overrides):
  data = default.get_config().data
  data.image_size = 32
  data.update(overrides)
  return data


def test_normalize_numpy_and_jax():
  x = np.array([0, 1, 127, 128, 255], np.uint8)
  for arr in (x, jnp.asarray(x)):
    y = preprocess.normalize(arr)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), x / 127.5 - 1, atol=1e-6)
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0


def test_maps_equal_direct_cv2_calls():
  rgb = imagefactory.sample_rgb(3)
  for method in ('spectral_residual', 'fine_grained'):
    data = _data_config(saliency=method)
    ex = preprocess.preprocess_image(rgb, data, None)
    s = data.image_size
    assert {k: (v.shape, v.dtype) for k, v in ex.items()} == {
        'rgb': ((s, s, 3), np.uint8), 'gray': ((s, s, 1), np.uint8),
        'edge': ((s, s, 1), np.uint8), 'saliency': ((s, s, 1), np.uint8)}
    bgr = cv2.cvtColor(ex['rgb'], cv2.COLOR_RGB2BGR)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(ex['gray'][..., 0], gray)
    np.testing.assert_array_equal(
        ex['edge'][..., 0], cv2.Canny(gray, data.canny_low, data.canny_high))
    assert set(np.unique(ex['edge'])) <= {0, 255}
    algo = (cv2.saliency.StaticSaliencySpectralResidual_create()
            if method == 'spectral_residual'
            else cv2.saliency.StaticSaliencyFineGrained_create())
    ok, sal = algo.computeSaliency(bgr)
    assert ok
    np.testing.assert_array_equal(
        ex['saliency'][..., 0], np.round(sal * 255).astype(np.uint8))
    assert ex['saliency'].max() > 0


def test_centre_crop_and_resize_area():
  rgb = imagefactory.sample_rgb(0)  # landscape 256 x 171
  h, w = rgb.shape[:2]
  out = preprocess.resize_and_crop(rgb, 32)
  left = (w - h) // 2
  want = cv2.resize(rgb[:, left:left + h], (32, 32),
                    interpolation=cv2.INTER_AREA)
  np.testing.assert_array_equal(out, want)


def test_random_crop_and_flip_are_seeded():
  rgb = imagefactory.sample_rgb(1)
  data = _data_config(random_crop=True, random_flip=True)
  runs = [[preprocess.preprocess_image(rgb, data, np.random.default_rng(s))
           for s in range(6)] for _ in range(2)]
  for a, b in zip(*runs):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  distinct = {runs[0][i]['rgb'].tobytes() for i in range(6)}
  assert len(distinct) > 1
  # Without an rng the options do nothing: the centre crop.
  centre = preprocess.preprocess_image(rgb, _data_config(), None)
  np.testing.assert_array_equal(
      preprocess.preprocess_image(rgb, data, None)['rgb'], centre['rgb'])


def test_flip_mirrors_every_map():
  ex = preprocess.preprocess_image(imagefactory.sample_rgb(2), _data_config())
  flipped = preprocess.flip(ex)
  for k in ex:
    np.testing.assert_array_equal(flipped[k], ex[k][:, ::-1])


@pytest.mark.parametrize('name', sorted(imagefactory.GOOD_KINDS))
def test_odd_formats_decode(tmp_path, name):
  rgb = imagefactory.sample_rgb(5)
  path = imagefactory.write(str(tmp_path / name),
                            imagefactory.GOOD_KINDS[name](rgb))
  ex = preprocess.load_example(path, _data_config())
  assert ex['rgb'].shape == (32, 32, 3) and ex['rgb'].dtype == np.uint8
  decoded = preprocess.decode_image(open(path, 'rb').read())
  assert decoded.dtype == np.uint8 and decoded.shape[2] == 3
  if name == 'tiny.jpg':
    assert decoded.shape == (7, 10, 3)
  else:
    assert decoded.shape == rgb.shape
  if name == 'gray.png':
    assert np.array_equal(decoded[..., 0], decoded[..., 2])
  if name == 'rgba.png':  # transparent quarter composited over white
    assert (decoded[:, :rgb.shape[1] // 4] == 255).all()
    np.testing.assert_array_equal(decoded[:, rgb.shape[1] // 4:],
                                  rgb[:, rgb.shape[1] // 4:])
  if name == 'deep16.png':
    np.testing.assert_array_equal(decoded, rgb)
  if name in ('cmyk.jpg', 'photo.webp'):  # lossy: close in colour
    assert np.abs(decoded.astype(int) - rgb).mean() < 12


@pytest.mark.parametrize('name,kind', [
    ('empty.jpg', 'empty file'),
    ('truncated.jpg', 'truncated JPEG'),
    ('truncated.png', 'not a decodable image'),
    ('text.jpg', 'not a decodable image'),
])
def test_broken_files_raise_bad_image(tmp_path, name, kind):
  path = imagefactory.write(str(tmp_path / name),
                            imagefactory.BAD_KINDS[name](
                                imagefactory.sample_rgb(0)))
  with pytest.raises(preprocess.BadImageError) as e:
    preprocess.load_example(path, _data_config())
  assert e.value.kind == kind


def test_unreadable_file(tmp_path):
  path = str(tmp_path / 'locked.jpg')
  imagefactory.make_unreadable(path)
  with pytest.raises(preprocess.BadImageError) as e:
    preprocess.load_example(path, _data_config())
  assert e.value.kind == 'unreadable'


@pytest.mark.parametrize('make', [imagefactory.jpeg_bytes,
                                  imagefactory.png_bytes,
                                  imagefactory.webp, imagefactory.bmp])
def test_too_large_is_refused_from_the_header(make):
  rgb = imagefactory.sample_rgb(0)
  data = make(rgb)
  h, w = rgb.shape[:2]
  assert preprocess.image_size_from_header(data) == (w, h)
  with pytest.raises(preprocess.BadImageError) as e:
    preprocess.decode_image(data, max_pixels=w * h - 1)
  assert e.value.kind == 'too large'
  assert preprocess.decode_image(data, max_pixels=w * h).shape == (h, w, 3)


def test_reduced_jpeg_decode_keeps_min_side():
  data = imagefactory.jpeg_bytes(imagefactory.sample_rgb(0))  # 256 x 171
  assert preprocess.decode_image(data, min_side=64).shape == (86, 128, 3)
  assert preprocess.decode_image(data, min_side=100).shape == (171, 256, 3)


def test_bad_saliency_setting_is_named():
  with pytest.raises(ValueError, match='config.data.saliency'):
    preprocess.Options.from_config(_data_config(saliency='itti'))


def test_samples_are_real_colour_photos():
  files = imagefactory.sample_files()
  assert len(files) == 56
  assert sum(os.path.getsize(f) for f in files) <= 4 * 2**20
  for f in files[::8]:
    rgb = preprocess.decode_image(open(f, 'rb').read())
    assert max(rgb.shape[:2]) == 256
    assert np.abs(rgb.astype(int) - rgb.mean(-1, keepdims=True)).mean() > 2


# ---------------------------------------------------------------- headers
def _encoded(ext, rgb):
  """`rgb` encoded by cv2 as `ext` (gray for PBM/PGM, float for PFM/HDR)."""
  img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
  if ext in ('.pbm', '.pgm'):
    img = img[..., 0]
  if ext in ('.pfm', '.hdr'):
    img = img.astype(np.float32) / 255
  ok, buf = cv2.imencode(ext, img)
  assert ok
  return buf.tobytes()


def _j2k_codestream(rgb):
  """The bare JPEG 2000 codestream inside a cv2 .jp2 file."""
  data = _encoded('.jp2', rgb)
  for kind, start, end in preprocess._boxes(data, 0, len(data)):  # pylint: disable=protected-access
    if kind == b'jp2c':
      return data[start:end]
  raise AssertionError('no jp2c box')


@pytest.mark.parametrize('ext', ['.jpg', '.png', '.bmp', '.webp', '.tiff',
                                 '.gif', '.jp2', '.j2k', '.pbm', '.pgm',
                                 '.ppm', '.pam', '.pfm', '.sr', '.hdr',
                                 '.avif'])
def test_every_format_cv2_decodes_is_sized_from_its_header(ext):
  rgb = imagefactory.sample_rgb(2)[:37, :53]
  data = (_j2k_codestream(rgb) if ext == '.j2k' else _encoded(ext, rgb))
  assert preprocess.image_format(data) is not None
  assert preprocess.image_size_from_header(data) == (53, 37)
  with pytest.raises(preprocess.BadImageError) as e:
    preprocess.decode_image(data, max_pixels=53 * 37 - 1)
  assert e.value.kind == 'too large'
  assert preprocess.decode_image(data, max_pixels=53 * 37).shape == (37, 53, 3)


def _tiff_header(width, height, order='<', big=False):
  """A TIFF (or BigTIFF) whose first IFD claims width x height (LONG) and
  holds no pixels."""
  import struct  # pylint: disable=g-import-not-at-top
  magic = b'II' if order == '<' else b'MM'
  if big:
    head = magic + struct.pack(order + 'HHHQ', 43, 8, 0, 16)
    return head + struct.pack(order + 'Q', 2) + b''.join(
        struct.pack(order + 'HHQQ', tag, 16, 1, v)
        for tag, v in ((256, width), (257, height)))
  head = magic + struct.pack(order + 'HI', 42, 8)
  return head + struct.pack(order + 'H', 2) + b''.join(
      struct.pack(order + 'HHII', tag, 4, 1, v)
      for tag, v in ((256, width), (257, height))) + b'\0\0\0\0'


@pytest.mark.parametrize('data', [
    _tiff_header(100_000, 90_000), _tiff_header(100_000, 90_000, '>'),
    _tiff_header(100_000, 90_000, big=True),
    b'GIF89a\xa0\x86\x90\x5f' + b'\0' * 40,   # 34464 x 24464
    b'P6\n# a comment\n100000 90000\n255\n',
    imagefactory.header_only_png(100_000, 90_000)])
def test_header_only_bombs_are_refused_before_decoding(data):
  w, h = preprocess.image_size_from_header(data)
  assert w * h > 10**8
  with pytest.raises(preprocess.BadImageError) as e:
    preprocess.decode_image(data, max_pixels=10**8)
  assert e.value.kind == 'too large'


def test_bytes_of_no_known_format_or_without_a_size_are_not_decoded():
  for data in (b'\x00\x01 not an image' * 10, b'II*\x00' + b'\xff' * 4,
               b'GIF89a'):
    with pytest.raises(preprocess.BadImageError) as e:
      preprocess.decode_image(data)
    assert e.value.kind == 'not a decodable image'


# ---------------------------------------------------------------- reading
@pytest.fixture
def special_files(tmp_path):
  """{name: path} of a FIFO, a socket, a device and links to them, all with
  photo names."""
  import socket  # pylint: disable=g-import-not-at-top
  paths = {'fifo.jpg': str(tmp_path / 'fifo.jpg'),
           'socket.png': str(tmp_path / 'socket.png'),
           'link-to-fifo.jpg': str(tmp_path / 'link-to-fifo.jpg'),
           'device.jpg': str(tmp_path / 'device.jpg')}
  os.mkfifo(paths['fifo.jpg'])
  sock = socket.socket(socket.AF_UNIX)
  sock.bind(paths['socket.png'])
  os.symlink(paths['fifo.jpg'], paths['link-to-fifo.jpg'])
  os.symlink('/dev/zero', paths['device.jpg'])  # endless if read
  yield paths
  sock.close()


def _no_hang(seconds=20):
  """Fails the test instead of hanging forever on a blocking open/read."""
  import signal  # pylint: disable=g-import-not-at-top

  def fail(*_):
    raise AssertionError('a special file was opened and blocked')
  signal.signal(signal.SIGALRM, fail)
  signal.alarm(seconds)


def test_special_files_are_refused_unopened(special_files):
  import signal  # pylint: disable=g-import-not-at-top
  _no_hang()
  try:
    for name, path in special_files.items():
      with pytest.raises(preprocess.BadImageError) as e:
        preprocess.load_example(path, _data_config())
      assert e.value.kind == 'not a regular file', name
      kind = {'fifo.jpg': 'named pipe', 'link-to-fifo.jpg': 'named pipe',
              'socket.png': 'socket', 'device.jpg': 'device'}[name]
      assert kind in e.value.reason
  finally:
    signal.alarm(0)


def test_files_over_the_size_limit_are_skipped_unread(tmp_path):
  path = imagefactory.write(str(tmp_path / 'a.jpg'), imagefactory.jpeg_bytes(
      imagefactory.sample_rgb(0)))
  size = os.path.getsize(path)
  with pytest.raises(preprocess.BadImageError) as e:
    preprocess.load_example(path, _data_config(max_file_bytes=size - 1))
  assert e.value.kind == 'file too large'
  assert 'config.data.max_file_bytes' in e.value.reason
  assert preprocess.load_example(path, _data_config(max_file_bytes=size))
  # Without a limit (a config saved before the key existed): the default.
  assert len(preprocess.read_file(path, None)) == size
  from jaxcolor.runtime import config_check  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data.max_file_bytes = 0
  with pytest.raises(ValueError, match=r'config.data.max_file_bytes=0: the '
                     'largest photo file in bytes must be an integer >= 1'):
    config_check.check(config)
  data = default.get_config().data
  del data['max_file_bytes']
  assert (preprocess.Options.from_config(data).max_file_bytes ==
          preprocess.DEFAULT_MAX_FILE_BYTES)
