"""The probe machinery of the robustness suites: main.py in fresh processes.

A `Probe` is one scenario: its arguments, what it must say, its exit code,
what must not change. `run_all` runs probes three at a time and reports
every one that failed. A probe may ask for a small disk (`disk_kb`): a
tmpfs of that size mounted at {tmp}/disk where the machine allows mounts
(CI runs as root), else a per-file size limit (RLIMIT_FSIZE) on the
process, so writes beyond it fail as on a full disk.
"""

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import resource
import subprocess
import sys
from typing import Callable, Optional

import helpers

TEMP_SUFFIX = '.jaxcolor-tmp'
ZEN = 'Beautiful is better than ugly'  # printed by `import this`

# The CIC baseline at tiny widths on the tiny data: compiles in seconds.
CIC = ('--config=configs/cic_baseline.py', '--config.model.widths=(8,16,16,32,16)',
       '--config.data.train_dir=jaxcolor/data/samples',
       '--config.data.val_fraction=0.15', '--config.data.batch_size=4',
       '--config.data.eval_batch_size=4', '--config.data.num_workers=0',
       '--config.num_eval_batches=1', '--config.log_every_steps=2',
       '--config.image_every_steps=2', '--config.eval_every_steps=2',
       '--config.checkpoint_every_steps=2', '--config.keep_checkpoints=3')


@dataclasses.dataclass
class Probe:
  """One scenario: main.py arguments, what it must say, what must not change.

  `args` may hold '{tmp}' (the probe's folder) and '{run}' (a copy of a
  trained tiny run); `setup(tmp)` makes its files; `rc` is the exit code
  (None: any non-zero); `says` must appear in the output; `check(tmp,
  output)` asserts more; `disk_kb` gives the probe a small disk at
  {tmp}/disk (read-only with `disk_read_only`: mounts only).
  """
  name: str
  args: tuple
  says: str
  rc: Optional[int] = None
  setup: Optional[Callable] = None
  check: Optional[Callable] = None
  converter: bool = False
  env: Optional[dict] = None
  disk_kb: Optional[int] = None
  disk_read_only: bool = False


def hashes(root: str) -> dict:
  """{relative path: md5} of every regular file under `root`."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      if os.path.isfile(p) and not os.path.islink(p):
        with open(p, 'rb') as fh:
          out[os.path.relpath(p, root)] = hashlib.md5(fh.read()).hexdigest()
  return out


def temporaries(root: str) -> list[str]:
  """Files that a write of this product left unfinished under `root`."""
  return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
          if f.endswith(TEMP_SUFFIX) or f.endswith('.tmp')]


def can_mount() -> bool:
  if os.geteuid() != 0:
    return False
  probe = os.path.join(os.environ.get('TMPDIR', '/tmp'),
                       f'jaxcolor-mount-probe-{os.getpid()}')
  os.makedirs(probe, exist_ok=True)
  try:
    ok = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs',
                         probe], capture_output=True).returncode == 0
    if ok:
      subprocess.run(['umount', probe], check=True)
    return ok
  finally:
    os.rmdir(probe)


MOUNTS = can_mount()


@contextlib.contextmanager
def small_disk(folder: str, kb: int, read_only: bool = False):
  """A tmpfs of `kb` KiB at `folder` for the block; yields a preexec_fn
  for the process (a file size limit where mounting is not allowed)."""
  os.makedirs(folder, exist_ok=True)
  if not MOUNTS:
    def limit():
      resource.setrlimit(resource.RLIMIT_FSIZE, (kb * 1024, kb * 1024))
    yield limit
    return
  options = f'size={kb}k' + (',ro' if read_only else '')
  subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', folder],
                 check=True)
  try:
    yield None
  finally:
    subprocess.run(['umount', '-l', folder], check=False)


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def run_one(probe: Probe, tmp: str, run: str) -> tuple[Probe, str, str]:
  """Runs a probe; returns (probe, '' or what went wrong, output)."""
  os.makedirs(tmp, exist_ok=True)
  with contextlib.ExitStack() as stack:
    preexec = (stack.enter_context(small_disk(
        os.path.join(tmp, 'disk'), probe.disk_kb, probe.disk_read_only))
               if probe.disk_kb else None)
    if probe.setup:
      probe.setup(tmp)
    inputs = os.path.join(tmp, 'in')
    before = hashes(inputs) if os.path.isdir(inputs) else {}
    args = [a.format(tmp=tmp, run=run) for a in probe.args]
    if probe.converter:
      cmd = [sys.executable, '-m', 'jaxcolor.models.convert_resnet18', *args]
    else:
      cmd = [sys.executable, os.path.join(helpers.ROOT, 'main.py'), *args]
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
               **(probe.env or {}))
    result = subprocess.run(cmd, cwd=helpers.ROOT, env=env,
                            capture_output=True, text=True, timeout=300,
                            preexec_fn=preexec)
    out = result.stdout + result.stderr
    problems = []
    if probe.rc is None and result.returncode == 0:
      problems.append('exit code 0, expected a failure')
    elif probe.rc is not None and result.returncode != probe.rc:
      problems.append(f'exit code {result.returncode}, expected {probe.rc}')
    if probe.says not in out:
      problems.append(f'output lacks {probe.says!r}')
    if 'Traceback' in out:
      problems.append('a Python traceback reached the user')
    if before and hashes(inputs) != before:
      problems.append('an input file changed')
    if probe.check and not problems:
      try:
        probe.check(tmp, out)
      except AssertionError as e:
        problems.append(f'check: {e}')
  return probe, '; '.join(problems), out


def run_all(probes, tmp_path, run=''):
  """Runs `probes` three at a time; fails naming every probe that failed."""
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    results = list(pool.map(
        lambda p: run_one(p, str(tmp_path / p.name), run), probes))
  failed = [f'{p.name}: {why}\n    ' + '\n    '.join(out.strip().splitlines()[-6:])
            for p, why, out in results if why]
  assert not failed, f'{len(failed)} of {len(probes)} probes failed:\n' + \
      '\n'.join(failed)
