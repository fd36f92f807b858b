"""--mode=prepare: ArrayRecord shards, metadata checks, input benchmark."""

import json
import os

import numpy as np
import pytest

from array_record.python import array_record_module
from configs import default
from jaxcolor.modes import benchmark
from jaxcolor import records
from jaxcolor.data import pipeline
from jaxcolor.data import preprocess
from jaxcolor.data import sources
import imagefactory


def _config(train_dir, prepared_dir='', **data):
  config = default.get_config()
  config.data.train_dir = train_dir
  config.data.prepared_dir = prepared_dir
  config.data.val_fraction = 0.3
  config.data.image_size = 32
  config.data.batch_size = 4
  config.data.eval_batch_size = 4
  config.data.num_workers = 0
  config.data.prepare_shard_size = 4
  config.data.prepare_processes = 1
  config.data.update(data)
  return config


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """A mixed folder (good and bad files) prepared with 2 processes."""
  root = tmp_path_factory.mktemp('prep')
  folder = str(root / 'photos')
  good, bad = imagefactory.make_mixed_folder(folder, n_good=6)
  config = _config(folder, str(root / 'records'), prepare_processes=2)
  meta = records.prepare(config)
  return config, meta, good, bad


def _read_records(path):
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return [reader.read([i])[0] for i in range(reader.num_records())]
  finally:
    reader.close()


def test_metadata_counts_and_skips(prepared):
  config, meta, good, bad = prepared
  out = config.data.prepared_dir
  with open(os.path.join(out, 'metadata.json')) as f:
    assert json.load(f) == meta
  assert meta['format_version'] == sources.FORMAT_VERSION
  assert (meta['image_size'], meta['canny_low'], meta['canny_high'],
          meta['saliency']) == (32, 100, 200, 'spectral_residual')
  split = sources.split_files(config.data)
  total_written = total_skipped = 0
  for name in ('train', 'val'):
    entry = meta['splits'][name]
    assert entry['num_files'] == len(split[name])
    assert entry['num_examples'] + sum(entry['skipped'].values()) == len(
        split[name])
    assert len(entry['shards']) == -(-entry['num_examples'] // 4)
    for i, shard in enumerate(entry['shards']):
      n = len(entry['shards'])
      assert shard == f'{name}-{i:05d}-of-{n:05d}.array_record'
    assert pipeline.num_examples(config, name) == entry['num_examples']
    total_written += entry['num_examples']
    total_skipped += sum(entry['skipped'].values())
  assert (total_written, total_skipped) == (len(good), len(bad))
  assert not [n for n in os.listdir(out) if n.endswith('.tmp')]


def test_records_equal_on_the_fly_preprocessing(prepared):
  config, meta, good, _ = prepared
  names = []
  import msgpack  # pylint: disable=g-import-not-at-top
  for split in ('train', 'val'):
    for shard in meta['splits'][split]['shards']:
      for raw in _read_records(os.path.join(config.data.prepared_dir, shard)):
        name = msgpack.unpackb(raw)['name']
        names.append(name)
        want = preprocess.load_example(
            os.path.join(config.data.train_dir, name), config.data)
        got = sources.decode_record(raw)
        assert got.keys() == want.keys()
        for k in want:
          np.testing.assert_array_equal(got[k], want[k])
  assert sorted(names) == good


def test_pipelines_read_records_like_the_folder(prepared):
  config, _, _, _ = prepared
  folder = config.copy_and_resolve_references()
  folder.data.prepared_dir = ''
  from_records = list(pipeline.build_eval_dataset(config, process_index=0,
                                                  process_count=1))
  from_folder = list(pipeline.build_eval_dataset(folder, process_index=0,
                                                 process_count=1))
  assert len(from_records) == len(from_folder) > 0
  for a, b in zip(from_records, from_folder):
    for k in b:
      np.testing.assert_array_equal(a[k], b[k])
  config = config.copy_and_resolve_references()
  config.data.random_flip = True
  it = iter(pipeline.build_train_dataset(config, process_index=0,
                                         process_count=1))
  for _ in range(2):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  again = iter(pipeline.build_train_dataset(config, process_index=0,
                                            process_count=1))
  again.set_state(state)
  for a in want:
    b = next(again)
    assert a['rgb'].shape == (4, 32, 32, 3)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_metadata_mismatch_is_named(prepared):
  config = prepared[0].copy_and_resolve_references()
  config.data.canny_low = 50
  config.data.saliency = 'fine_grained'
  with pytest.raises(ValueError, match=r'(?s)config.data.canny_low: records '
                     r'have 100, config has 50.*config.data.saliency'):
    pipeline.build_train_dataset(config, process_index=0, process_count=1)
  with pytest.raises(ValueError, match='config.data.canny_low'):
    pipeline.num_examples(config, 'train')
  config = prepared[0].copy_and_resolve_references()
  config.data.random_crop = True
  with pytest.raises(ValueError, match='random_crop'):
    pipeline.build_train_dataset(config, process_index=0, process_count=1)


def test_missing_records_say_how_to_make_them(tmp_path):
  config = _config('', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='--mode=prepare'):
    pipeline.num_examples(config, 'train')


def test_refuses_to_overwrite_unless_asked(tmp_path):
  folder = str(tmp_path / 'photos')
  imagefactory.copy_samples(folder, 3)
  out = tmp_path / 'records'
  out.mkdir()
  (out / 'keep.txt').write_text('user file')
  config = _config(folder, str(out), val_fraction=0.0)
  with pytest.raises(ValueError, match='prepare_overwrite'):
    records.prepare(config)
  config.data.prepare_overwrite = True
  assert records.prepare(config)['splits']['train']['num_examples'] == 3
  config.data.image_size = 16  # a second run replaces the records
  meta = records.prepare(config)
  assert meta['image_size'] == 16
  assert sorted(os.listdir(out)) == ['keep.txt', 'metadata.json',
                                     'train-00000-of-00001.array_record']
  with pytest.raises(ValueError, match='prepared_dir is empty'):
    records.prepare(_config(folder, ''))


def test_missing_train_dir_fails_before_writing(tmp_path):
  config = _config(str(tmp_path / 'nowhere'), str(tmp_path / 'records'))
  with pytest.raises(FileNotFoundError, match='nowhere'):
    records.prepare(config)
  assert not os.path.exists(tmp_path / 'records')


def test_input_benchmark_writes_table_and_json(tmp_path, capsys):
  folder = str(tmp_path / 'photos')
  imagefactory.copy_samples(folder, 8)
  config = _config(folder, val_fraction=0.0)
  config.benchmark.what = 'input'
  config.benchmark.num_batches = 2
  config.benchmark.warmup_batches = 1
  report = benchmark.run(config, str(tmp_path / 'work'))
  out = capsys.readouterr().out
  assert 'preparing records' in out and 'images/s' in out
  with open(tmp_path / 'work' / 'benchmark_input.json') as f:
    assert json.load(f) == report
  assert [(r['path'], r['num_workers']) for r in report['results']] == [
      ('folder', 0), ('records', 0)]
  assert all(r['images_per_s'] > 0 and r['images'] == 8
             for r in report['results'])
  config.benchmark.what = 'train'
  with pytest.raises(ValueError, match="benchmark.what='train'"):
    benchmark.run(config, None)
