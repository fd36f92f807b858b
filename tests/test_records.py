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


# ---------------------------------------------------------------- damage
@pytest.fixture(scope='module')
def clean_records(tmp_path_factory):
  """12 photos prepared into 2 train shards of 6 records (no val split)."""
  root = tmp_path_factory.mktemp('clean')
  folder = str(root / 'photos')
  imagefactory.copy_samples(folder, 12)
  config = _config(folder, str(root / 'records'), val_fraction=0.0,
                   prepare_shard_size=6)
  meta = records.prepare(config)
  assert meta['splits']['train']['num_examples'] == 12
  return config


def _copy(config, tmp_path):
  """The records of `config` copied to tmp_path; a config reading them."""
  import shutil  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  out = str(tmp_path / 'records')
  shutil.copytree(config.data.prepared_dir, out)
  config.data.prepared_dir = out
  return config, [os.path.join(out, n) for n in sorted(os.listdir(out))
                  if n.startswith('train-')]


def _rewrite(shard, change):
  """Writes `shard` again with change(i, example) -> example per record."""
  import msgpack  # pylint: disable=g-import-not-at-top
  raws = _read_records(shard)
  writer = array_record_module.ArrayRecordWriter(shard + '.new',
                                                 'group_size:1')
  for i, raw in enumerate(raws):
    example = change(i, sources.decode_record(raw))
    writer.write(sources.encode_record(example, msgpack.unpackb(raw)['name']))
  writer.close()
  os.replace(shard + '.new', shard)


def _nan_rgb(example):
  return dict(example, rgb=np.full(example['rgb'].shape, np.nan, np.float32))


def test_a_corrupt_chunk_is_named_skipped_and_never_stops_a_resume(
    clean_records, tmp_path, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  config, shards = _copy(clean_records, tmp_path)
  with open(shards[0], 'r+b') as f:  # bytes in the middle of its records
    f.seek(8000)
    f.write(np.random.default_rng(0).bytes(4096))
  data = pipeline.Data.create(config, process_index=0, process_count=1)
  split, loader = data.loader('train')
  with caplog.at_level(logging.WARNING):
    data.check_usable('train')
    kept = [loader(split.source[i]) for i in range(len(split.source))]
  damaged = [i for i, e in enumerate(kept) if e is None]
  assert damaged and max(damaged) < 6  # only shard 0's records
  assert dict(loader.skipped) == {'damaged record': len(damaged)}
  for i in damaged:
    assert (f'Skipping record {i} of {shards[0]}: damaged record (Corrupted '
            'Riegeli') in caplog.text
  assert 'Traceback' not in caplog.text
  # Training reads on through the damage, and resumes from every state.
  it = iter(data.train_dataset())
  states = []
  for _ in range(6):  # about 3 epochs
    states.append(it.get_state())
    assert next(it)['rgb'].shape == (4, 32, 32, 3)
  for state in states:
    again = iter(data.train_dataset())
    again.set_state(state)
    assert next(again)['rgb'].shape == (4, 32, 32, 3)


def test_a_shard_with_a_damaged_index_is_left_out_with_a_warning(
    clean_records, tmp_path, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  config, shards = _copy(clean_records, tmp_path)
  with open(shards[1], 'wb') as f:
    f.write(b'not an ArrayRecord file')
  data = pipeline.Data.create(config, process_index=0, process_count=1)
  with caplog.at_level(logging.WARNING):
    source = data.split('train').source
  assert len(source) == 6
  assert f'Skipping the prepared shard {shards[1]}: damaged' in caplog.text
  assert next(iter(data.train_dataset()))['rgb'].shape == (4, 32, 32, 3)


def test_records_unlike_metadata_are_rejected_and_counted(clean_records,
                                                         tmp_path, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  from jaxcolor.color import mean_chroma  # pylint: disable=g-import-not-at-top
  config, shards = _copy(clean_records, tmp_path)
  want, images = mean_chroma.training_mean(clean_records)
  assert images == 12
  # One record's rgb rewritten as float32 NaN of the same shape.
  _rewrite(shards[1], lambda i, e: _nan_rgb(e) if i == 2 else e)
  data = pipeline.Data.create(config, process_index=0, process_count=1)
  split, loader = data.loader('train')
  with caplog.at_level(logging.WARNING):
    assert loader(split.source[8]) is None
    mean, images = mean_chroma.training_mean(config, data)
  assert (f"Skipping record 2 of {shards[1]}: record does not match "
          "metadata.json ('rgb' is float32 (32, 32, 3), expected uint8 "
          "(32, 32, 3))") in caplog.text
  assert ('Mean chroma: 1 training record(s) skipped (1 record does not '
          'match metadata.json)') in caplog.text
  assert images == 11 and np.isfinite(mean).all()
  assert np.allclose(mean, want, atol=3)
  # A chroma.json of NaN (as this NaN record gave before) is replaced.
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'chroma.json'), 'w') as f:
    f.write('{"mean_chroma_cr_cb": [NaN, NaN], "images": 12}')
  with caplog.at_level(logging.WARNING):
    assert mean_chroma.ensure_written(config, workdir, data) == mean
  assert 'chroma.json is damaged (the mean chroma (nan, nan)' in caplog.text
  assert mean_chroma.read(workdir) == mean
  # Every record rewritten: training set-up refuses, with the count.
  for shard in shards:
    _rewrite(shard, lambda i, e: _nan_rgb(e))
  data = pipeline.Data.create(config, process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r'no usable train image among the 12 '
                     r'record\(s\) .*\(12 record does not match '
                     r'metadata.json\)'):
    data.check_usable('train')


def test_mean_chroma_is_finite_or_an_error_never_a_file(tmp_path, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  from jaxcolor.color import mean_chroma  # pylint: disable=g-import-not-at-top
  gray = np.full((4, 4, 3), 100.0)
  red = np.zeros((4, 4, 3))
  red[..., 0] = 255.0
  with_nan = red.copy()
  with_nan[0, 0, 1] = np.nan
  with_nan[1, 1, 2] = np.inf
  with caplog.at_level(logging.WARNING):
    mean, images = mean_chroma.chroma_mean(
        [('gray', gray), ('nan', with_nan),
         ('all-nan', np.full((2, 2, 3), np.nan))])
  assert images == 2 and np.isfinite(mean).all()
  assert 'Mean chroma: 2 of 16 pixels of nan are not finite' in caplog.text
  assert 'Mean chroma: 4 of 4 pixels of all-nan are not finite' in caplog.text
  red_cr = 0.713 * (255.0 - 0.299 * 255.0)
  assert mean[0] == pytest.approx(128 + red_cr * 14 / 30, rel=1e-5)
  assert mean_chroma.chroma_mean([('nan', np.full((2, 2, 3), np.nan))]) == (
      None, 0)
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match='not finite'):
    mean_chroma.write(workdir, (float('nan'), 128.0), 3)
  assert not os.path.exists(os.path.join(workdir, 'chroma.json'))
  # A chroma.json of NaN (as older versions wrote) is damaged for readers.
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'chroma.json'), 'w') as f:
    f.write('{"mean_chroma_cr_cb": [NaN, NaN], "images": 3}')
  with pytest.raises(ValueError, match=r'chroma.json is damaged \(the mean '
                     r'chroma \(nan, nan\) is not finite\)'):
    mean_chroma.read(workdir)
