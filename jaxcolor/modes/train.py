"""The training loop: set-up, state, compile, loop, checkpoint.

Everything about the model comes from its family (`jaxcolor.families`):
the state it trains, its per-device step and how it colorizes a batch. The
loop feeds it batches from the run's `pipeline.Data`, logs, evaluates,
writes sample grids and checkpoints, and resumes exactly where a run
stopped (state, data iterator and config are checkpointed together).
"""

import dataclasses
import functools
import os
import signal
import sys
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcolor import families
from jaxcolor import summaries
from jaxcolor import trainer
from jaxcolor.color import mean_chroma
from jaxcolor.data import pipeline
from jaxcolor.data import preprocess
from jaxcolor.runtime import checkpoint
from jaxcolor.runtime import console
from jaxcolor.runtime import files
from jaxcolor.runtime import folder_lock
from jaxcolor.runtime import parallel
from jaxcolor.runtime import profiler
from jaxcolor.runtime import saved_config

AXIS = parallel.AXIS


# ------------------------------------------------------------------ set-up
def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """<workdir>/config.json: the run's config as JSON (for report and people)."""
  path = os.path.join(workdir, saved_config.RUN_CONFIG_FILE)
  files.write_json(path, config.to_dict(), indent=1, default=str)
  return path


# ------------------------------------------------------------------ evaluation during training
def eval_step(state: Any, batch: dict, *, colorize: Callable):
  """Sums of per-image PSNR/SSIM (model and gray copy) over the valid
  images, and the images themselves (for sample grids: one program serves
  both).

  `colorize(state, batch)['fake_rgb']` is the model's RGB in [-1, 1];
  `batch['mask']` (B,) is 1 for real examples and 0 for padding. Returns
  (state unchanged, (sums psum-ed over devices, this device's `colorize`
  outputs)).
  """
  import dm_pix  # pylint: disable=g-import-not-at-top
  outputs = colorize(state, batch)
  real = preprocess.to_unit(preprocess.normalize(batch['rgb']))
  fake = preprocess.to_unit(outputs['fake_rgb'])
  gray3 = jnp.repeat(preprocess.to_unit(preprocess.normalize(batch['gray'])),
                     3, axis=-1)
  mask = batch['mask'].astype(jnp.float32)
  sums = {
      'psnr': dm_pix.psnr(real, fake), 'ssim': dm_pix.ssim(real, fake),
      'psnr_gray': dm_pix.psnr(real, gray3),
      'ssim_gray': dm_pix.ssim(real, gray3),
  }
  sums = {k: jnp.sum(v * mask) for k, v in sums.items()}
  sums['count'] = jnp.sum(mask)
  return state, (jax.lax.psum(sums, AXIS), outputs)


def compile_eval(family: families.Family, par: parallel.Parallel) -> Callable:
  """`eval_step` of `family` compiled on `par`: its sums replicated, its
  images sharded like the batch."""
  return par.compile(functools.partial(eval_step, colorize=family.colorize),
                     donate_state=False, batch_output=(False, True))


def evaluate(eval_fn, state, par, data: pipeline.Data) -> dict[str, float]:
  """Mean PSNR/SSIM of the model and of the gray copy over the val split."""
  totals = None
  for batch in data.eval_batches():
    _, (sums, _) = eval_fn(state, par.put_batch(batch))
    sums = par.fetch(sums)
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  if not totals or totals['count'] == 0:
    return {}
  count = totals.pop('count')
  return {f'val/{k}': float(v / count) for k, v in totals.items()}


def _write_samples(writer, workdir, step, eval_fn, step_state, batch, par,
                   family):
  """Gray | generated | real [| the family's own columns] grid to
  TensorBoard and a PNG (`eval_fn`'s images of `batch`)."""
  _, (_, out) = eval_fn(step_state, par.put_batch(batch))
  out = _gather_local(out)
  inputs = {k: preprocess.normalize(v) for k, v in batch.items()
            if k in ('gray', 'rgb')}
  n = int(batch['mask'].sum())
  columns = [inputs['gray'], out['fake_rgb'], inputs['rgb'],
             *family.sample_columns(out)]
  grid = summaries.sample_grid([c[:n] for c in columns])
  if jax.process_index() == 0:
    writer.write_images(step, {'samples': grid[None]})
    summaries.write_png(os.path.join(workdir, 'samples',
                                     f'step_{step:07d}.png'), grid)


def _gather_local(tree):
  """This process's rows of a batch-sharded output, in batch order (numpy)."""
  def one(x):
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    data = np.concatenate([np.asarray(s.data) for s in shards])
    return data.reshape((-1,) + data.shape[-3:])
  return jax.tree.map(one, tree)


# ------------------------------------------------------------------ the loop
class NonFiniteError(FloatingPointError):
  """A loss or gradient norm became NaN/inf."""


def _check_finite(step: int, metrics: dict, intact: str) -> None:
  """Raises NonFiniteError; `intact` names the last intact checkpoint."""
  bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
  if bad:
    raise NonFiniteError(
        f'Non-finite {", ".join(bad)} at step {step}; stopping. {intact}; '
        'lower the learning rates or check the data before running again.')


class CheckpointSaveError(ValueError):
  """A checkpoint could not be written (a full disk, a lost mount)."""


class WorkdirWriteError(ValueError):
  """A file of the run (a sample grid, ...) could not be written."""


class StopRequested(KeyboardInterrupt):
  """SIGTERM or SIGINT arrived while the run was waiting (for data, a
  compile, an evaluation). A KeyboardInterrupt, so no `except Exception`
  (such as the loader's skip of a bad file) swallows it."""

  def __init__(self, signum: int, phase: str = ''):
    super().__init__(signum)
    self.signum, self.phase = signum, phase


class _Signals:
  """SIGTERM/SIGINT handler: stops the run cleanly, as soon as it can.

  While a step, an evaluation or a save runs (`busy`: a step donates the
  state's buffers), the run stops after it, with a checkpoint. While it
  waits for data, the batch gets `DATA_GRACE_S` seconds to arrive (then it
  is trained on, so the saved data iterator matches the state); a pipeline
  that hangs longer is cut off, and the last checkpoint stands. Before the
  first step (set-up, building the state) there is nothing to save: the
  process ends at once, releasing its lock (`on_exit`).
  """
  DATA_GRACE_S = 10

  def __init__(self, on_exit: Callable[[], None] = lambda: None):
    self.received: list[int] = []
    self.phase = 'set-up'   # what the run is doing
    self.busy = False       # True while a step, evaluation or save runs
    self.on_exit = on_exit

  def __call__(self, signum, _frame):
    if signum == signal.SIGALRM:  # the data grace period is over
      raise StopRequested(self.received[0], 'data')
    self.received.append(signum)
    if self.busy:
      logging.warning('Received signal %d: stopping after this %s.', signum,
                      self.phase)
    elif self.phase == 'data':
      logging.warning('Received signal %d while waiting for data: stopping '
                      'after this batch (or in %d s).', signum,
                      self.DATA_GRACE_S)
      signal.alarm(self.DATA_GRACE_S)
    else:
      # Raising here could land inside a JAX call; nothing is saved yet.
      logging.warning('Received signal %d during %s: stopped before the '
                      'first step; the last checkpoint stands. Resume by '
                      'running the same command again.', signum, self.phase)
      self.on_exit()
      logging.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access

  def install(self) -> dict:
    return {s: signal.signal(s, self)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}


def _log_progress(step: int, total: int, summary: dict, keys, t_start: float,
                  start_step: int) -> None:
  """One console line per log step: step, throughput, ETA, main losses."""
  done = step - start_step
  elapsed = time.time() - t_start
  eta = elapsed / done * (total - step) if done else 0.0
  ips = summary.get('train/images_per_sec_per_device', 0.0) * jax.device_count()
  losses = '  '.join(f'{k} {summary[f"train/{k}"]:.4g}' for k in keys
                     if f'train/{k}' in summary)
  logging.info('step %d/%d  %.2f img/s  ETA %s  %s', step, total, ips,
               time.strftime('%H:%M:%S', time.gmtime(eta)), losses)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Trains (resuming from `workdir` if it holds checkpoints); returns the state.

  One run at a time per workdir (a lock); SIGTERM/SIGINT stop it cleanly:
  during a step, after it with a checkpoint; while waiting for data or in
  set-up, at once (the last checkpoint stands). A run that is refused (a
  config its checkpoints cannot take, unusable data) writes nothing.
  """
  parallel.maybe_initialize_distributed(config.distributed)
  trainer.check_devices(config)
  lock = (folder_lock.FolderLock(workdir) if jax.process_index() == 0
          else None)
  signals = _Signals(on_exit=lock.release if lock is not None else
                     lambda: None)
  old_handlers = signals.install()
  try:
    if lock is not None and os.path.isdir(workdir):
      try:
        lock.acquire(claim=False)  # refuses at once if a live run holds it
      except OSError:
        pass  # an unwritable workdir: said in one line before any write
    return _train(config, workdir, signals, lock)
  except StopRequested as e:
    logging.warning('Stopped by signal %d during %s; the last checkpoint '
                    'stands. Resume by running the same command again.',
                    e.signum, e.phase)
    raise
  finally:
    signal.alarm(0)
    for s, h in old_handlers.items():
      signal.signal(s, h)
    if lock is not None:
      lock.release()


def _fine_tuning_source(config, workdir: str, family: families.Family
                        ) -> Optional[trainer.Source]:
  """The model config.init_from names, read and checked; None without one,
  or when the workdir holds checkpoints (the run resumes from its own)."""
  if not config.init_from:
    return None
  if checkpoint.step_dirs(workdir):
    logging.info('Resuming from the checkpoints in %s: config.init_from=%r '
                 'is ignored (it starts a new run only).', workdir,
                 config.init_from)
    return None
  return trainer.read_source(family, config.init_from)


def _train(config, workdir, signals: _Signals,
           lock: Optional[folder_lock.FolderLock]) -> Any:
  """The run itself (see `train_and_evaluate`); `lock` is claimed once
  every check has passed, before the first write (process 0 only)."""
  # ---------------------------------------------------------------- set-up
  process_index, process_count = jax.process_index(), jax.process_count()
  family, data = trainer.family_and_data(config)
  total_steps = trainer.num_train_steps(config, data)
  if config.num_train_steps != total_steps:
    # A run given in epochs: its length, known now, is what a decaying
    # learning-rate schedule spans (and what config.json records).
    config = config.copy_and_resolve_references()
    config.num_train_steps = total_steps
    family = families.build(config)
  k = config.steps_per_call
  if total_steps % k:
    raise ValueError(f'{total_steps} training steps are not a multiple of '
                     f'config.steps_per_call={k}')
  data.check_usable('train')
  source = _fine_tuning_source(config, workdir, family)
  par = parallel.Parallel.create(config.parallel)
  upgrade = functools.partial(families.upgrade_config,
                              allowed=(config.model.name,))
  # Every check that can refuse the run, before anything is written.
  abstract_state = trainer.abstract_state(family, par)
  checkpoint.check_resumable(workdir, abstract_state, config, upgrade,
                             family.resume_may_differ)
  if process_index == 0:
    files.check_writable(workdir, '--workdir')
    lock.acquire()  # claims it (taking over a killed run's)
    files.remove_stale_temporaries(
        workdir, skip_dirs=('checkpoints', checkpoint.DAMAGED_DIR))
    checkpoint.clean_interrupted(workdir)
    mean_chroma.ensure_written(config, workdir, data)  # once, for colorize
    write_config(config, workdir)
  train_split = data.split('train')
  logging.info('Model %s; data: %d train / %d val %s (%s); %d device(s) '
               '(%s), %d process(es).', family.name,
               train_split.num_examples, data.num_examples('val'),
               'files' if train_split.kind == 'folder' else 'records',
               config.data.prepared_dir or config.data.train_dir,
               jax.device_count(), jax.default_backend(), process_count)

  # ---------------------------------------------------------------- state
  # Restored from the newest intact checkpoint (shapes only: no weights
  # file is read, no data pass made), or built fresh on the devices.
  signals.phase = 'state set-up'
  train_iter = iter(data.train_dataset())
  try:
    manager = checkpoint.create_manager(workdir, config)
    restored = checkpoint.restore_latest(
        manager, abstract_state, train_iter, config,
        writer=process_index == 0, upgrade=upgrade,
        may_differ=family.resume_may_differ)
    if restored is None:
      state = trainer.init_state(family, par, config, data, source)
      start_step = 0
    else:
      start_step, state = restored
      if start_step % k:
        raise ValueError(
            f'The checkpoint is at step {start_step}, not a multiple of '
            f'config.steps_per_call={k}; resume with a steps_per_call that '
            'divides it')
    family.check_data(state, data)
    logging.info('%s: steps %d..%d, global batch %d.',
                 f'Resuming from step {start_step}' if start_step else
                 'Fresh start', start_step + 1, total_steps,
                 config.data.batch_size)
    run = _Run(config=config, workdir=workdir, signals=signals,
               family=family, data=data, par=par, manager=manager,
               train_iter=train_iter, total_steps=total_steps)
    with console.disk_faults_reported_once(), \
        checkpoint.failed_writes_quiet():
      return _loop(run, state, start_step)
  finally:
    close = getattr(train_iter, 'close', None)
    if close is not None:
      close()  # Grain worker processes and their shared memory


@dataclasses.dataclass(frozen=True)
class _Run:
  """What the loop works with, set up once by `_train`."""
  config: ml_collections.ConfigDict
  workdir: str
  signals: _Signals
  family: families.Family
  data: pipeline.Data
  par: parallel.Parallel
  manager: Any           # the Orbax CheckpointManager
  train_iter: Any        # the Grain iterator, checkpointed with the state
  total_steps: int


def _loop(run: _Run, state: Any, start_step: int) -> Any:
  """Compiles the calls, then steps, logs, evaluates and checkpoints."""
  config, workdir, signals = run.config, run.workdir, run.signals
  family, data, par = run.family, run.data, run.par
  manager, train_iter, total_steps = (run.manager, run.train_iter,
                                      run.total_steps)
  # Imported here: they pull in TensorFlow, which other modes do not need.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  # ---------------------------------------------------------------- compile
  signals.phase = 'compile'
  process_index = jax.process_index()
  k = config.steps_per_call
  writer = metric_writers.create_default_writer(
      workdir, just_logging=process_index > 0, asynchronous=True)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in
                          checkpoint.flatten_dict(config.to_dict()).items()})
  step_fn = trainer.make_train_fn(family, par, config)
  eval_fn = compile_eval(family, par)  # evaluation and sample grids
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer,
      every_steps=config.log_every_steps)
  hooks = [report_progress] if process_index == 0 else []
  # config.profile_steps: a jax.profiler trace of those steps (whole calls).
  trace = profiler.StepTrace(config.get('profile_steps', ()),
                             os.path.join(workdir, 'profile'), k,
                             run=range(start_step + 1, total_steps + 1))

  # ---------------------------------------------------------------- loop
  sample_batch = next(data.eval_batches(), None)
  train_metrics = []   # host copies, merged at each log step
  pending = None       # (step, device metrics) fetched one call late
  step_state = par.to_step_layout(state)
  del state
  images_per_step = config.data.batch_size
  t_log = t_start = time.time()
  done = saved = start_step  # the step step_state is at; the last saved
  consistent = False  # True once the loop ends (or stops) between steps
  # The newest checkpoint known to be on disk whole, and the step whose
  # asynchronous save is still being written (named once it is done).
  intact = start_step or None
  unconfirmed = None

  def newest_intact() -> str:
    if intact is None:
      return 'No checkpoint has been written yet'
    return (f'The newest intact checkpoint is step {intact} '
            f'({os.path.join(workdir, "checkpoints", str(intact))})')

  def after_making_room() -> str:
    if intact is None:
      return ('No checkpoint has been written yet: make room and run the '
              'same command again to start afresh.')
    return (f'{newest_intact()}: make room and run the same command again '
            'to resume from it.')

  def confirm_save(wait: bool) -> None:
    """Names the pending save once Orbax has written it; CheckpointSaveError
    (naming the newest intact one) if it failed."""
    nonlocal intact, unconfirmed
    if unconfirmed is None or (not wait and manager.is_saving_in_progress()):
      return
    step, unconfirmed = unconfirmed, None
    try:
      manager.wait_until_finished()
      manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      checkpoint.drop_orphaned_reports()  # the failed writes' leftovers
      raise CheckpointSaveError(
          f'Checkpoint of step {step} could not be written '
          f'({checkpoint.root_cause(e)}). {after_making_room()}') from e
    intact = step
    logging.info('Checkpoint of step %d -> %s', step,
                 os.path.join(workdir, 'checkpoints', str(step)))

  def flush():
    """Fetches the pending step's metrics; writes a summary at log steps."""
    nonlocal pending, train_metrics, t_log
    if pending is None:
      return
    s, m = pending
    pending = None
    m = par.fetch(m)
    _check_finite(s, m, newest_intact())
    train_metrics.extend(trainer.split_metrics(m, k))
    if s % config.log_every_steps == 0 or s == total_steps:
      summary = {f'train/{key}':
                 float(np.mean([x[key] for x in train_metrics])) for key in m}
      now = time.time()
      summary['train/images_per_sec_per_device'] = (
          len(train_metrics) * images_per_step / (now - t_log) /
          jax.device_count())
      writer.write_scalars(s, summary)
      if process_index == 0:
        _log_progress(s, total_steps, summary, family.console_metrics,
                      t_start, start_step)
      train_metrics, t_log = [], now

  def save(step):
    nonlocal saved, unconfirmed
    flush()
    confirm_save(wait=True)  # one save at a time, as Orbax does
    with report_progress.timed('checkpoint'):
      try:
        checkpoint.save(manager, step, par.from_step_layout(step_state),
                        train_iter, config)
      except Exception as e:  # pylint: disable=broad-except
        checkpoint.drop_orphaned_reports()  # the failed writes' leftovers
        raise CheckpointSaveError(
            f'Checkpoint of step {step} could not be written '
            f'({checkpoint.root_cause(e)}). {after_making_room()}') from e
    saved, unconfirmed = step, step

  try:
    # Each call runs k steps; every *_every_steps is a multiple of k, so the
    # step after a call is where logs, evals and checkpoints fall due.
    for step in range(start_step + k, total_steps + 1, k):
      trace.step_begins(step - k + 1)  # also traces the wait for data
      signals.phase, signals.busy = 'data', False
      with report_progress.timed('data'):
        batch = trainer.put_train_batches(
            par, [next(train_iter) for _ in range(k)], config)
      signals.phase, signals.busy = 'step', True  # runs to its end
      signal.alarm(0)  # a data grace period (see _Signals) is not needed
      with report_progress.timed('step', wait_jax_async_dispatch=False):
        step_state, metrics = step_fn(step_state, batch)
      done = step
      trace.step_done(step, (step_state, metrics))
      flush()  # the previous call's, while the device runs this one
      pending = (step, metrics)
      for h in hooks:
        h(step)
      confirm_save(wait=False)
      if signals.received:
        break

      signals.phase = 'evaluation'  # still busy: stops after it
      is_last = step == total_steps
      if (step % config.image_every_steps == 0 or is_last) and sample_batch:
        _write_samples(writer, workdir, step, eval_fn, step_state,
                       sample_batch, par, family)
      if step % config.eval_every_steps == 0 or is_last:
        with report_progress.timed('eval'):
          scores = evaluate(eval_fn, step_state, par, data)
        writer.write_scalars(step, scores)
        if scores and process_index == 0:
          logging.info('eval step %d: PSNR %.2f dB (gray copy %.2f), SSIM '
                       '%.3f (gray copy %.3f)', step, scores['val/psnr'],
                       scores['val/psnr_gray'], scores['val/ssim'],
                       scores['val/ssim_gray'])

      # ------------------------------------------------------------ checkpoint
      if step % config.checkpoint_every_steps == 0 or is_last:
        signals.phase = 'checkpoint'
        save(step)
      if signals.received:
        break
    flush()
    consistent = True
  except Exception as e:  # pylint: disable=broad-except
    # A full or read-only disk under a sample grid, the event file (written
    # by TensorFlow, which wraps the OS error) or anything else of the run.
    fault = files.disk_fault(e) or (files.is_target_fault(e) and e.strerror)
    if not fault or isinstance(e, CheckpointSaveError):
      raise
    try:
      confirm_save(wait=True)
    except CheckpointSaveError as save_error:
      logging.error('%s', save_error)
    where = getattr(e, 'filename', None) or workdir
    raise WorkdirWriteError(
        f'Cannot write {where}: {fault} (after step {done}). '
        f'{after_making_room()}') from e
  except StopRequested as e:
    consistent = e.phase != 'data'
    if not consistent:  # an iterator cut off mid-batch cannot be saved
      logging.warning('Stopped while waiting for data after step %d; the '
                      'checkpoint of step %d stands.', done, saved)
      raise
  finally:
    trace.close()  # a run that stopped inside the traced steps
    signals.busy = True
    failing = sys.exc_info()[1] is not None
    try:
      if signals.received and consistent and done > saved:
        save(done)
      confirm_save(wait=True)
      writer.flush()
    except Exception as e:  # pylint: disable=broad-except
      fault = e if isinstance(e, CheckpointSaveError) else (
          WorkdirWriteError(
              f'Cannot write the event file in {workdir}: '
              f'{files.disk_fault(e)}. {after_making_room()}')
          if files.disk_fault(e) else None)
      if fault is None:
        raise
      if not failing:
        raise fault from e
      logging.error('%s', fault)  # the error already under way is raised
    if signals.received and consistent:
      logging.warning('Stopped at step %d after signal %d; resume by '
                      'running the same command again.', done,
                      signals.received[0])
  return par.from_step_layout(step_state)


def main(config, args) -> None:
  train_and_evaluate(config, args.workdir)
