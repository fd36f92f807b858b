"""`main.py` as users run it: preemption, SIGKILL-exact resume, two hosts."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ('--config.eval_every_steps=1000', '--config.image_every_steps=1000',
          '--config.log_every_steps=1')


def start(workdir, *flags, log=None, devices=4):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=helpers.xla_flags(devices))
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=train',
         '--config=' + os.path.join(ROOT, 'configs', 'tiny.py'),
         f'--workdir={workdir}', *COMMON, *flags]
  out = open(log or os.path.join(str(workdir) + '.log'), 'ab')
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                          stderr=subprocess.STDOUT)


def finished(proc, timeout=300):
  return proc.wait(timeout=timeout)


def saved_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def wait_for_checkpoint(proc, workdir, after, timeout=300):
  """Waits until a finalized checkpoint newer than `after` exists."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    steps = [s for s in saved_steps(workdir) if s > after]
    if steps:
      return steps[-1]
    if proc.poll() is not None:
      raise AssertionError(f'process exited early with {proc.returncode}')
    time.sleep(0.05)
  raise AssertionError('no checkpoint appeared')


def final_params(workdir, step):
  tree = helpers.saved_state(workdir, step)
  return {'g': tree['g_params'], 'd': tree['d_params']}


def log_text(workdir):
  with open(str(workdir) + '.log', 'rb') as f:
    return f.read().decode(errors='replace')


# The uninterrupted reference run: 24 steps, a checkpoint every 4, all kept.
STEPS = 24
FLAGS = (f'--config.num_train_steps={STEPS}', '--config.checkpoint_every_steps=4',
         '--config.keep_checkpoints=6')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """(process, workdir) of the reference run, started once for both tests
  (its step 4 is the two-process test's; its end the resumed run's)."""
  ref = str(tmp_path_factory.mktemp('reference') / 'ref')
  proc = start(ref, *FLAGS)
  yield proc, ref
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def test_sigterm_and_sigkill_resume_exactly(tmp_path, reference):
  run = str(tmp_path / 'run')

  # Preemption: SIGTERM saves the current step and exits cleanly.
  proc = start(run, *FLAGS)
  first = wait_for_checkpoint(proc, run, after=0)
  proc.send_signal(signal.SIGTERM)
  assert finished(proc) == 0, log_text(run)
  stopped = re.findall(r'Stopped at step (\d+) after signal 15',
                       log_text(run))
  assert stopped, log_text(run)
  assert saved_steps(run)[-1] == int(stopped[-1]) >= first

  # Crash: SIGKILL somewhere after the next checkpoint, no chance to save.
  proc = start(run, *FLAGS)
  wait_for_checkpoint(proc, run, after=int(stopped[-1]))
  time.sleep(np.random.default_rng().uniform(0, 0.5))
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  assert saved_steps(run)[-1] < STEPS

  # Resume to the end; parameters equal the uninterrupted run bit for bit.
  ref_proc, ref = reference
  assert finished(start(run, *FLAGS)) == 0, log_text(run)
  assert finished(ref_proc) == 0, log_text(ref)
  assert 'Restored checkpoint' in log_text(run)
  a, b = final_params(ref, STEPS), final_params(run, STEPS)
  assert helpers.max_abs_diff(a, b) == 0.0


def test_two_processes_match_one(tmp_path, reference):
  # 4 steps on 2 processes of 2 devices each; the one process of 4 devices
  # is the reference run's first 4 steps (the same config but its length,
  # which no step reads: constant learning rates).
  steps = 4
  flags = (f'--config.num_train_steps={steps}',
           f'--config.checkpoint_every_steps={steps}')
  port = portpicker.pick_unused_port()
  multi = str(tmp_path / 'multi')
  procs = [start(multi, *flags, '--config.distributed.enabled=True',
                 f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                 '--config.distributed.num_processes=2',
                 f'--config.distributed.process_id={i}',
                 log=str(tmp_path / f'multi{i}.log'), devices=2)
           for i in range(2)]
  for i, p in enumerate(procs):
    assert finished(p) == 0, open(tmp_path / f'multi{i}.log').read()
  ref_proc, ref = reference
  assert finished(ref_proc) == 0, log_text(ref)
  assert '2 process(es)' in open(tmp_path / 'multi0.log').read()
  a, b = final_params(multi, steps), final_params(ref, steps)
  assert helpers.max_abs_diff(a, b) < 1e-5
