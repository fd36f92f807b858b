"""--mode=report: curves from a real run's event files; resumed and old logs."""

import os
import time

import cv2
import numpy as np
import pytest

from jaxcolor.modes import report
from jaxcolor.modes import train
import helpers

GAN_FILES = ('losses.png', 'critic.png', 'validation.png')


def read_png(path):
  image = cv2.imread(path)
  assert image is not None, path
  return image


def test_draws_a_tiny_runs_curves(tmp_path_factory):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  workdir = helpers.gan_run(tmp_path_factory)
  paths = report.run(workdir)
  assert [os.path.relpath(p, workdir) for p in paths] == [
      os.path.join('report', n) for n in GAN_FILES]
  for path in paths:
    h, w, _ = read_png(path).shape
    assert h >= 300 and w >= 900
  # The curves hold what TensorBoard itself reads from the same files.
  scalars = report.read_scalars(workdir)
  acc = event_accumulator.EventAccumulator(
      workdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  for tag in ('train/g_loss', 'train/l1', 'train/gan', 'train/saliency',
              'train/d_loss', 'train/d_real', 'train/d_fake', 'val/psnr',
              'val/psnr_gray', 'val/ssim', 'val/ssim_gray'):
    events = acc.Tensors(tag)
    expected = [float(tensor_util.make_ndarray(e.tensor_proto))
                for e in events]
    np.testing.assert_array_equal(scalars[tag].steps, [e.step for e in events])
    np.testing.assert_allclose(scalars[tag].values, expected, rtol=1e-6)
  assert list(scalars['train/g_loss'].steps) == [1, 2]
  assert list(scalars['val/psnr'].steps) == [2]


def write_clu(workdir, step_values: dict):
  """Scalars as the trainer writes them (clu, tensor summaries)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.SummaryWriter(workdir)
  for step, values in step_values.items():
    writer.write_scalars(step, values)
  writer.close()


def test_a_resumed_run_keeps_the_last_value_of_a_repeated_step(tmp_path):
  workdir = str(tmp_path)
  # First process: steps 1-3; killed after its checkpoint at step 2, the
  # resumed process logs step 3 again (with another value), then 4.
  write_clu(workdir, {s: {'train/loss': 10.0 - s} for s in (1, 2, 3)})
  time.sleep(1.1)  # event file names carry the second they were opened
  write_clu(workdir, {3: {'train/loss': 5.0},
                      4: {'train/loss': 4.0, 'val/psnr': 20.0,
                          'val/psnr_gray': 21.0}})
  assert len(report.event_files(workdir)) == 2
  scalars = report.read_scalars(workdir)
  np.testing.assert_array_equal(scalars['train/loss'].steps, [1, 2, 3, 4])
  np.testing.assert_array_equal(scalars['train/loss'].values, [9, 8, 5, 4])
  # A CIC run (the model comes from its saved config): one loss curve and
  # validation, no critic plot.
  train.write_config(helpers.tiny_cic(), workdir)
  paths = report.run(workdir)
  assert [os.path.basename(p) for p in paths] == ['losses.png',
                                                  'validation.png']
  for path in paths:
    read_png(path)


def test_reads_simple_value_summaries(tmp_path):
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
  writer = event_file_writer.EventFileWriter(str(tmp_path))
  for step in range(30):
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag='train/g_loss', simple_value=1.0 / (
            step + 1)),
        summary_pb2.Summary.Value(tag='train/d_loss', simple_value=-0.5)])
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                     summary=summary))
  writer.close()
  scalars = report.read_scalars(str(tmp_path))
  np.testing.assert_allclose(scalars['train/g_loss'].values,
                             1.0 / np.arange(1, 31))
  # 30 points: drawn smoothed; parts that were not logged say so.
  train.write_config(helpers.tiny_config(), str(tmp_path))
  paths = report.run(str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ['losses.png', 'critic.png']
  smoothed = report.smooth(np.array([1.0, 1.0, 1.0, 4.0]))
  np.testing.assert_allclose(smoothed[:3], 1.0)  # debiased: no ramp from 0
  assert 1.0 < smoothed[3] < 4.0


def test_clear_errors_without_event_files_or_losses(tmp_path):
  with pytest.raises(FileNotFoundError, match='no TensorBoard event files'):
    report.run(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='not an existing folder'):
    report.run(str(tmp_path / 'nope'))
  write_clu(str(tmp_path), {1: {'val/psnr': 20.0}})
  with pytest.raises(ValueError, match='holds no saved config'):
    report.run(str(tmp_path))
  train.write_config(helpers.tiny_config(), str(tmp_path))
  with pytest.raises(ValueError, match='none of the training losses of the '
                     "'edge_saliency_gan' model.*val/psnr"):
    report.run(str(tmp_path))


def test_command_line(tmp_path_factory):
  workdir = helpers.gan_run(tmp_path_factory)
  result = helpers.run_main('--mode=report', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  printed = result.stdout.split()
  assert printed == [os.path.join(workdir, 'report', n) for n in GAN_FILES]
