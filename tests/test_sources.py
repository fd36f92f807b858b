"""Folder listing, the hash split, and the record format."""

import os

import numpy as np
import pytest

from configs import default
from jaxcolor.data import sources
import imagefactory


def _touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, 'wb').close()


def test_listing_is_recursive_sorted_and_case_insensitive(tmp_path):
  for rel in ('b.JPG', 'a/c.png', 'a/z/d.Webp', 'e.tiff', 'f.jpeg', 'g.bmp',
              'h.TIF', 'notes.txt', '.hidden.jpg', '.cache/x.jpg', 'i.gif'):
    _touch(str(tmp_path / rel))
  os.makedirs(tmp_path / 'dir.jpg')
  assert sources.list_images(str(tmp_path)) == [
      'a/c.png', 'a/z/d.Webp', 'b.JPG', 'e.tiff', 'f.jpeg', 'g.bmp', 'h.TIF']


def test_missing_and_empty_folders_are_named(tmp_path):
  missing = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match='nope'):
    sources.list_images(missing)
  (tmp_path / 'empty').mkdir()
  _touch(str(tmp_path / 'empty' / 'readme.txt'))
  with pytest.raises(ValueError, match='empty.*no image files'):
    sources.list_images(str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match='train_dir is empty'):
    sources.list_images('')
  data = default.get_config().data
  imagefactory.copy_samples(str(tmp_path / 'photos'), 1)
  data.train_dir = str(tmp_path / 'photos')
  data.val_dir = missing
  with pytest.raises(FileNotFoundError, match='config.data.val_dir'):
    sources.split_files(data)


def test_hash_split_is_stable_disjoint_and_covering(tmp_path):
  names = [f'd{i % 7}/img{i:04d}.jpg' for i in range(400)]
  for n in names:
    _touch(str(tmp_path / n))
  data = default.get_config().data
  data.train_dir = str(tmp_path)
  data.val_fraction = 0.25
  split = sources.split_files(data)
  assert split == sources.split_files(data)
  train, val = set(split['train']), set(split['val'])
  assert not train & val
  assert train | val == {os.path.join(str(tmp_path), n) for n in names}
  assert 60 < len(val) < 140
  # Membership depends on the relative path only, not on the other files.
  assert all(sources.in_val_split(os.path.relpath(p, str(tmp_path)), 0.25)
             for p in val)
  data.val_fraction = 0.0
  assert not sources.split_files(data)['val']


def test_val_dir_replaces_the_hash_split(tmp_path):
  imagefactory.copy_samples(str(tmp_path / 'train'), 3)
  imagefactory.copy_samples(str(tmp_path / 'val'), 2, start=3)
  data = default.get_config().data
  data.train_dir = str(tmp_path / 'train')
  data.val_dir = str(tmp_path / 'val')
  split = sources.split_files(data)
  assert len(split['train']) == 3 and len(split['val']) == 2


def test_record_round_trip_keeps_extra_arrays():
  example = {
      'rgb': np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3),
      'edge': np.zeros((4, 4, 1), np.uint8),
      'resnet_features': np.linspace(-1, 1, 8, dtype=np.float16).reshape(
          1, 2, 4),
  }
  back = sources.decode_record(sources.encode_record(example, 'a/b.jpg'))
  assert back.keys() == example.keys()
  for k in example:
    assert back[k].dtype == example[k].dtype
    np.testing.assert_array_equal(back[k], example[k])


def test_record_version_mismatch_is_clear():
  import msgpack  # pylint: disable=g-import-not-at-top
  data = msgpack.packb({'version': 99, 'arrays': {}})
  with pytest.raises(ValueError, match='version 99.*prepare'):
    sources.decode_record(data)


def test_listing_names_special_files_without_opening_them(tmp_path):
  imagefactory.copy_samples(str(tmp_path), 1)
  os.mkfifo(tmp_path / 'fifo.jpg')  # opening it would block
  os.symlink('/dev/zero', tmp_path / 'zero.png')
  listed = sources.list_images(str(tmp_path))
  assert 'fifo.jpg' in listed and 'zero.png' in listed and len(listed) == 3


def test_record_arrays_are_checked_against_metadata():
  specs = sources.array_specs({'arrays': {
      'rgb': ['uint8', [4, 4, 3]], 'edge': ['uint8', [4, 4, 1]],
      'resnet_features': ['bfloat16', [1, 1, 8]]}})
  good = {'rgb': np.zeros((4, 4, 3), np.uint8),
          'edge': np.zeros((4, 4, 1), np.uint8),
          'resnet_features': np.zeros((1, 1, 8), sources.decode_dtype(
              'bfloat16'))}
  back = sources.decode_record(sources.encode_record(good))
  assert sources.array_mismatch(back, specs) == ''
  nan = dict(good, rgb=np.full((4, 4, 3), np.nan, np.float32))
  assert sources.array_mismatch(nan, specs) == (
      "'rgb' is float32 (4, 4, 3), expected uint8 (4, 4, 3)")
  bad = {'rgb': good['rgb'][:2], 'extra': good['edge']}
  assert sources.array_mismatch(bad, specs) == (
      "'edge' is missing; 'resnet_features' is missing; 'rgb' is uint8 "
      "(2, 4, 3), expected uint8 (4, 4, 3); unexpected array(s) 'extra'")
