"""Grain pipelines on real photos, with real worker processes."""

import hashlib
import logging
import os

import cv2
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from jaxcolor.data import pipeline
from jaxcolor.data import preprocess
import imagefactory

N_PHOTOS = 16


@pytest.fixture(scope='module')
def photo_dir(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('photos'))
  imagefactory.copy_samples(folder, N_PHOTOS)
  return folder


def _config(train_dir, **data):
  config = default.get_config()
  config.data.train_dir = train_dir
  config.data.val_fraction = 0.0
  config.data.image_size = 32
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.data.num_workers = 0
  config.data.prefetch_buffer_size = 2
  config.data.update(data)
  return config


def _key(rgb):
  return hashlib.md5(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def _file_keys(folder, config):
  """{hash of the example's rgb: file name} for the folder's photos."""
  return {_key(preprocess.load_example(os.path.join(folder, n),
                                       config.data)['rgb']): n
          for n in os.listdir(folder)}


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_batch_shapes_dtypes_ranges_and_maps(photo_dir):
  config = _config(photo_dir)
  it = iter(pipeline.build_train_dataset(config, process_index=0,
                                         process_count=1))
  batch = next(it)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      'rgb': ((8, 32, 32, 3), np.uint8), 'gray': ((8, 32, 32, 1), np.uint8),
      'edge': ((8, 32, 32, 1), np.uint8),
      'saliency': ((8, 32, 32, 1), np.uint8)}
  for k, v in batch.items():
    x = preprocess.normalize(v)
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
  assert set(np.unique(batch['edge'])) == {0, 255}
  sal = cv2.saliency.StaticSaliencySpectralResidual_create()
  for i in range(8):
    bgr = cv2.cvtColor(batch['rgb'][i], cv2.COLOR_RGB2BGR)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(batch['gray'][i, ..., 0], gray)
    np.testing.assert_array_equal(batch['edge'][i, ..., 0],
                                  cv2.Canny(gray, 100, 200))
    ok, s = sal.computeSaliency(bgr)
    assert ok
    np.testing.assert_array_equal(batch['saliency'][i, ..., 0],
                                  np.round(s * 255).astype(np.uint8))
  keys = _file_keys(photo_dir, config)
  assert all(_key(rgb) in keys for rgb in batch['rgb'])


def test_seeded_order_and_per_epoch_reshuffle(photo_dir):
  config = _config(photo_dir)
  build = lambda: iter(pipeline.build_train_dataset(
      config, process_index=0, process_count=1))
  first = _take(build(), 6)
  _assert_same(first, _take(build(), 6))
  keys = _file_keys(photo_dir, config)
  epochs = [[_key(r) for b in first[i:i + 2] for r in b['rgb']]
            for i in (0, 2, 4)]
  for order in epochs:  # each epoch: every photo once
    assert sorted(order) == sorted(keys)
  assert epochs[0] != epochs[1] != epochs[2]
  config.seed = 1
  other = _take(build(), 2)
  assert [_key(r) for b in other for r in b['rgb']] != epochs[0]


def test_process_shards_are_disjoint_and_cover_each_epoch(photo_dir):
  config = _config(photo_dir)
  keys = _file_keys(photo_dir, config)
  per_process = []
  for p in range(2):
    it = iter(pipeline.build_train_dataset(config, process_index=p,
                                           process_count=2))
    batches = _take(it, 4)  # 2 epochs: 4 batches x 4 examples x 2 processes
    assert batches[0]['rgb'].shape[0] == 4
    per_process.append([[_key(r) for b in batches[e * 2:e * 2 + 2]
                         for r in b['rgb']] for e in range(2)])
  for epoch in range(2):
    a, b = per_process[0][epoch], per_process[1][epoch]
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(keys)


@pytest.mark.parametrize('workers', [0, 2])
def test_iterator_state_restores_the_next_batches(photo_dir, workers):
  config = _config(photo_dir, num_workers=workers, random_flip=True,
                   random_crop=True)
  ds = pipeline.build_train_dataset(config, process_index=0, process_count=1)
  it = iter(ds)
  first = _take(it, 3)
  state = it.get_state()
  want = _take(it, 3)
  it.close()
  again = iter(pipeline.build_train_dataset(config, process_index=0,
                                            process_count=1))
  _assert_same(first, _take(again, 3))  # same seed: same batches
  again.set_state(state)
  _assert_same(want, _take(again, 3))
  again.close()


def test_orbax_checkpoint_manager_round_trip(photo_dir, tmp_path):
  config = _config(photo_dir, num_workers=2)
  build = lambda: iter(pipeline.build_train_dataset(
      config, process_index=0, process_count=1))
  it = build()
  _take(it, 2)
  manager = ocp.CheckpointManager(str(tmp_path / 'ckpt'))
  manager.save(2, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  want = _take(it, 3)
  it.close()
  restored = build()
  manager = ocp.CheckpointManager(str(tmp_path / 'ckpt'))
  manager.restore(manager.latest_step(), args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same(want, _take(restored, 3))
  restored.close()
  manager.close()


def _add_special_files(folder):
  """A FIFO, a socket and a link to a FIFO with photo names (opening the
  FIFOs would block forever); returns their names and the bound socket."""
  import socket  # pylint: disable=g-import-not-at-top
  os.mkfifo(os.path.join(folder, 'fifo.jpg'))
  os.symlink(os.path.join(folder, 'fifo.jpg'),
             os.path.join(folder, 'fifo-link.png'))
  sock = socket.socket(socket.AF_UNIX)
  sock.bind(os.path.join(folder, 'socket.jpg'))
  return ['fifo-link.png', 'fifo.jpg', 'socket.jpg'], sock


def test_bad_files_are_skipped_logged_and_counted(tmp_path, caplog):
  folder = str(tmp_path / 'mixed')
  good, bad = imagefactory.make_mixed_folder(folder, n_good=4)
  special, sock = _add_special_files(folder)
  bad += special
  config = _config(folder, val_dir=folder, eval_batch_size=4)
  assert pipeline.num_examples(config, 'train') == len(good) + len(bad)
  with caplog.at_level(logging.WARNING):
    batches = list(pipeline.build_eval_dataset(config, process_index=0,
                                               process_count=1))
  assert sum(b['rgb'].shape[0] for b in batches) == len(good)
  log = caplog.text
  for name, reason in [('empty.jpg', 'empty file'),
                       ('truncated.jpg', 'truncated JPEG'),
                       ('truncated.png', 'not a decodable image'),
                       ('text.jpg', 'not a decodable image'),
                       ('unreadable.jpg', 'unreadable'),
                       ('fifo.jpg', 'not a regular file (a named pipe)'),
                       ('fifo-link.png', 'not a regular file (a named pipe)'),
                       ('socket.jpg', 'not a regular file (a socket)')]:
    assert f'{name}: {reason}' in log
  assert f'({len(bad)} skipped in this process so far)' in log
  # Too large for a low pixel limit: every file is skipped, nothing raises.
  config.data.max_image_pixels = 60  # below even the 10 x 7 one
  assert not list(pipeline.build_eval_dataset(config, process_index=0,
                                              process_count=1))
  # Training runs through the bad files in worker processes for 3 epochs.
  config.data.max_image_pixels = 10**8
  config.data.num_workers = 2
  it = iter(pipeline.build_train_dataset(config, process_index=0,
                                         process_count=1))
  for batch in _take(it, 4):
    assert batch['rgb'].shape == (8, 32, 32, 3)
    # Out of Grain's shared memory: nothing left to leak at exit.
    assert all(type(v) is np.ndarray for v in batch.values())
  it.close()
  sock.close()


def test_set_up_counts_special_files_with_broken_photos(tmp_path):
  folder = str(tmp_path / 'none')
  os.makedirs(folder)
  imagefactory.write(os.path.join(folder, 'text.jpg'), b'not a photo' * 9)
  _, sock = _add_special_files(folder)
  data = pipeline.Data.create(_config(folder), process_index=0,
                              process_count=1)
  with pytest.raises(ValueError, match=r'no usable train image among the 4 '
                     r'file\(s\) of the train split \(3 not a regular file, '
                     r'1 not a decodable image\)'):
    data.check_usable('train')
  sock.close()


def test_eval_is_ordered_complete_and_keeps_partial_batch(photo_dir):
  config = _config(photo_dir, val_dir=photo_dir, eval_batch_size=5)
  assert pipeline.num_examples(config, 'val') == N_PHOTOS
  sizes = lambda bs: [b['rgb'].shape[0] for b in bs]
  single = list(pipeline.build_eval_dataset(config, process_index=0,
                                            process_count=1))
  assert sizes(single) == [5, 5, 5, 1]
  keys = _file_keys(photo_dir, config)
  order = [keys[_key(r)] for b in single for r in b['rgb']]
  assert order == sorted(os.listdir(photo_dir))
  config.data.num_workers = 2
  _assert_same(single, list(pipeline.build_eval_dataset(
      config, process_index=0, process_count=1)))
  config.data.num_workers = 0
  shards = [list(pipeline.build_eval_dataset(
      config, process_index=p, process_count=2, batch_size=3))
            for p in range(2)]
  assert [sizes(s) for s in shards] == [[3, 3, 2], [3, 3, 2]]
  seen = [keys[_key(r)] for s in shards for b in s for r in b['rgb']]
  assert sorted(seen) == sorted(order) and len(set(seen)) == N_PHOTOS


def test_empty_val_split_gives_no_batches(photo_dir):
  config = _config(photo_dir)
  assert pipeline.num_examples(config, 'val') == 0
  assert not list(pipeline.build_eval_dataset(config, process_index=0,
                                              process_count=1))


def test_clear_errors_before_any_work(tmp_path, photo_dir):
  with pytest.raises(FileNotFoundError, match='missing'):
    pipeline.build_train_dataset(_config(str(tmp_path / 'missing')),
                                 process_index=0, process_count=1)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no image files'):
    pipeline.num_examples(_config(str(tmp_path / 'empty')), 'train')
  with pytest.raises(ValueError, match='batch_size=8'):
    pipeline.build_train_dataset(_config(photo_dir), process_index=0,
                                 process_count=3)
  with pytest.raises(ValueError, match='process_index=2'):
    pipeline.build_train_dataset(_config(photo_dir), process_index=2,
                                 process_count=2)
