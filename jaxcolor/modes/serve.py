"""`--mode=serve`: colorize photos from a local web page.

  python main.py --mode=serve --workdir=RUN_OR_BUNDLE [--port=7860] [--host=127.0.0.1]

A small Starlette app served by uvicorn, with one static page
(`serve_static/index.html`: no external scripts, works offline). A photo is
posted as the raw request body (kept in memory, never written to disk),
decoded with `preprocess.decode_image` (the limits of the model's config)
and colorized with `inference.colorize_photos`, i.e. exactly as
`--mode=colorize` does it, in the same compiled batch size, so the result is
the same pixel for pixel. Requests that arrive together are colorized in one
batch. The page gets the gray input and the colour result as PNGs.

Memory: each photo's work (decode, gray, full-size colour, PNGs) is charged
`BYTES_PER_PIXEL` per pixel, read from the file's header before decoding,
against a budget (`--serve_memory_mb`; default: one photo at the
model's `max_image_pixels`). Photos that fit run together; the others wait
their turn (first come, first served); a photo that alone exceeds the budget
is refused before it is decoded.

Host header: only requests for a name the server listens on are answered
(421 otherwise), so a web page cannot reach the server through DNS
rebinding. Loopback addresses answer to `localhost`, `127.0.0.1` and `[::1]`;
another address to itself; `0.0.0.0` / `::` (every interface) to any IP
address, `localhost` and the machine's own names. `--serve_host` (repeated)
adds names, e.g. that of a reverse proxy.

`--workdir` may be a training workdir (one choice per finished checkpoint,
newest first), an export bundle, a step folder, or a folder whose
sub-folders are bundles or workdirs (one choice each). The first choice is
loaded and compiled at start-up; the others when first used (then kept).

This module must not import TensorFlow (the command starts fast).
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import os
import queue
import re
import secrets
import socket
import threading
import time
from typing import Any, Iterable, Optional, Sequence
import urllib.parse

from absl import logging
import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
import uvicorn

from jaxcolor.runtime import checkpoint
from jaxcolor import inference
from jaxcolor.color import recombine
from jaxcolor.data import preprocess
from jaxcolor.runtime import files

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'serve_static')
MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # per photo
RESULT_CACHE_BYTES = 1024 * 1024 * 1024  # PNGs kept for the page to fetch
MAX_LOADED_MODELS = 4
DEFAULT_MAX_PIXELS = 100_000_000
# Peak memory of one photo's work per pixel (decode, gray, chroma upsampled
# to full size and recombined, PNGs), measured on 16M-64M pixel photos
# (42 and 47 bytes), with a margin.
BYTES_PER_PIXEL = {'bilinear': 48, 'guided': 56}
LOOPBACK_NAMES = ('localhost', '127.0.0.1', '::1')
EVERY_INTERFACE = ('', '0.0.0.0', '::')


# ------------------------------------------------------------------ models
@dataclasses.dataclass(frozen=True)
class Choice:
  """One model the page can pick: `path` is what `inference.load` reads;
  `source` names it for the page (relative to --workdir's base name, never
  an absolute path)."""
  id: str
  label: str
  path: str
  source: str = ''


def _bundle_label(path: str) -> str:
  try:
    meta = json.loads(files.read_regular(
        os.path.join(path, inference.BUNDLE_FILE), files.JSON_LIMIT))
    return f'{meta.get("model", "?")}, step {meta.get("step", "?")}'
  except (OSError, ValueError, AttributeError):
    return 'bundle'


def shown_path(root: str, path: str) -> str:
  """`path` (`root` or under it) as the page shows it: from `root`'s base
  name on, e.g. 'models/a_scgan'."""
  base = os.path.basename(os.path.abspath(root)) or 'workdir'
  rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
  return base if rel == '.' else os.path.join(base, rel)


def discover(path: str) -> list[Choice]:
  """The models under `path`, the one to load first first.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: nothing under it is a model (the message says what was
      expected).
  """
  return [dataclasses.replace(c, source=shown_path(path, c.path))
          for c in _discover(path)]


def _discover(path: str) -> list[Choice]:
  inference.check_model_folder(
      path, 'a training workdir, an export bundle, or a folder of them')
  if inference.is_bundle(path):
    return [Choice('0', f'{os.path.basename(os.path.normpath(path))} '
                   f'({_bundle_label(path)})', path)]
  steps = checkpoint.step_dirs(path)
  if steps:
    return [Choice(str(i), f'step {os.path.basename(d)}', d)
            for i, d in enumerate(reversed(steps))]
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    # inference.load says it well: no finished checkpoint yet.
    inference.load(path)
  choices = []
  for name in sorted(os.listdir(path)):
    sub = os.path.join(path, name)
    if not os.path.isdir(sub):
      continue
    if inference.is_bundle(sub):
      choices.append(Choice(str(len(choices)),
                            f'{name} ({_bundle_label(sub)})', sub))
    elif checkpoint.step_dirs(sub):
      newest = checkpoint.step_dirs(sub)[-1]
      choices.append(Choice(str(len(choices)),
                            f'{name} (step {os.path.basename(newest)})', sub))
  if not choices:
    raise ValueError(f'{path!r} is not a model: neither a training workdir '
                     f'(checkpoints/), an export bundle '
                     f'({inference.BUNDLE_FILE}), nor a folder of them')
  return choices


def model_info(predictor, source: str) -> dict[str, Any]:
  """What the page shows of a loaded model (`source`: `Choice.source`)."""
  s = predictor.image_size
  return {
      'model': predictor.model_name, 'step': predictor.step,
      'image_size': s, 'source': source,
      'max_image_pixels': _max_pixels(predictor),
      'note': (f'The model works at {s}x{s} px; its chroma is upsampled onto '
               "the photo's own full-resolution luminance, so the result "
               'has the size and sharpness of the photo.'),
  }


def _max_pixels(predictor) -> int:
  return int(predictor.config.data.get('max_image_pixels', DEFAULT_MAX_PIXELS))


class ModelChoices:
  """The choices of a --workdir; loads each on first use and keeps it
  (at most MAX_LOADED_MODELS, least recently used dropped)."""

  def __init__(self, path: str,
               batch_size: int = inference.DEFAULT_BATCH_SIZE,
               allowed_families: Sequence[str] = ()):
    self.path = path
    self.allowed_families = tuple(allowed_families)
    self.choices = discover(path)
    self.by_id = {c.id: c for c in self.choices}
    self.batch_size = batch_size
    self._loaded: collections.OrderedDict[str, Any] = collections.OrderedDict()
    self._lock = threading.Lock()

  @property
  def default_id(self) -> str:
    return self.choices[0].id

  def get(self, model_id: Optional[str] = None):
    """The Predictor of a choice (loaded, compiled and warmed once)."""
    model_id = model_id or self.default_id
    if model_id not in self.by_id:
      raise KeyError(model_id)
    with self._lock:
      if model_id in self._loaded:
        self._loaded.move_to_end(model_id)
        return self._loaded[model_id]
      choice = self.by_id[model_id]
      start = time.time()
      predictor = inference.load(choice.path, batch_size=self.batch_size,
                                 allowed_families=self.allowed_families)
      s = predictor.image_size
      # Compile the one function every request uses.
      inference.colorize_photos(predictor, [np.zeros((s, s, 3), np.uint8)])
      logging.info('serve: loaded %s (%s, step %d) in %.1f s', choice.path,
                   predictor.model_name, predictor.step, time.time() - start)
      self._loaded[model_id] = predictor
      while len(self._loaded) > MAX_LOADED_MODELS:
        self._loaded.popitem(last=False)
      return predictor

  def loaded_info(self, model_id: str) -> Optional[dict[str, Any]]:
    with self._lock:
      p = self._loaded.get(model_id)
    return (model_info(p, self.by_id[model_id].source) if p is not None
            else None)

  def hide_paths(self, text: str) -> str:
    """`text` (e.g. an error) with --workdir's absolute path shortened to
    its base name, as `Choice.source` shows it."""
    shown = shown_path(self.path, self.path)
    for root in sorted({os.path.abspath(self.path),
                        os.path.realpath(self.path)}, key=len, reverse=True):
      if root != os.sep:
        text = text.replace(root, shown)
    return text


# ------------------------------------------------------------------ batching
class Batcher:
  """One worker thread runs the model; photos queued while it is busy are
  colorized together (up to the compiled batch size, one model at a time),
  exactly as `inference.colorize_photos` batches a folder."""

  def __init__(self, batch_size: int,
               upsampling: str = recombine.DEFAULT_UPSAMPLING):
    self.batch_size = batch_size
    self.upsampling = upsampling
    self._queue: queue.Queue = queue.Queue()
    self._held = None
    threading.Thread(target=self._work, name='colorize', daemon=True).start()

  def submit(self, predictor, image: np.ndarray) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    self._queue.put((predictor, image, future))
    return future

  def _next(self, block: bool):
    if self._held is not None:
      job, self._held = self._held, None
      return job
    return self._queue.get(block=block)

  def _work(self):
    while True:
      # No photo stays referenced here while waiting for the next batch.
      self._run(self._batch())

  def _batch(self) -> list:
    jobs = [self._next(block=True)]
    while len(jobs) < self.batch_size:
      try:
        job = self._next(block=False)
      except queue.Empty:
        break
      if job[0] is not jobs[0][0]:  # another model: next round
        self._held = job
        break
      jobs.append(job)
    return jobs

  def _run(self, jobs: list) -> None:
    try:
      rgbs = inference.colorize_photos(jobs[0][0], [j[1] for j in jobs],
                                       self.upsampling)
      for job, rgb in zip(jobs, rgbs):
        job[2].set_result(rgb)
    except Exception as e:  # pylint: disable=broad-except
      for job in jobs:
        job[2].set_exception(e)


# ------------------------------------------------------------------ memory
def photo_bytes(pixels: int, upsampling: str) -> int:
  """The estimated peak memory of one photo's work."""
  return pixels * BYTES_PER_PIXEL[upsampling]


def memory_budget_bytes(memory_mb: Optional[float]) -> Optional[int]:
  """--serve_memory_mb in bytes; None when not given.

  Raises:
    ValueError: it is not a positive number.
  """
  if memory_mb is None:
    return None
  if not 0 < memory_mb < float('inf'):
    raise ValueError(f'--serve_memory_mb={memory_mb:g}: expected a positive '
                     'number of MB')
  return int(memory_mb * 2**20)


class MemoryBudget:
  """Bytes of photo work allowed at once; waiters are served in order.

  Used from one event loop (the server's); not thread-safe.
  """

  def __init__(self, total: int):
    self.total = total
    self.used = 0
    self._waiters: collections.deque = collections.deque()

  @contextlib.asynccontextmanager
  async def hold(self, amount: int):
    """Waits until `amount` (at most `total`) fits, holds it in the block;
    0 never waits."""
    amount = min(amount, self.total)
    if amount and (self._waiters or self.used + amount > self.total):
      waiter = (amount, asyncio.get_running_loop().create_future())
      self._waiters.append(waiter)
      try:
        await waiter[1]
      except asyncio.CancelledError:
        if waiter[1].done() and not waiter[1].cancelled():
          self._release(amount)  # granted, then cancelled
        else:
          self._waiters.remove(waiter)
          self._wake()
        raise
    else:
      self.used += amount
    try:
      yield
    finally:
      self._release(amount)

  def _release(self, amount: int) -> None:
    self.used -= amount
    self._wake()

  def _wake(self) -> None:
    while self._waiters and (
        self.used + self._waiters[0][0] <= self.total):
      amount, future = self._waiters.popleft()
      if not future.done():
        self.used += amount
        future.set_result(None)


def _mb(n: int) -> str:
  return f'{n / 2**20:,.0f} MB'


# ------------------------------------------------------------------ Host
def _host_name(value: str) -> Optional[str]:
  """A Host header -> its name, lower case, without port or brackets
  ('[::1]:7860' -> '::1'); None if malformed."""
  value = value.strip().lower()
  if value.startswith('['):
    end = value.find(']')
    name, port = value[1:end], value[end + 1:]
    if end < 0 or ':' not in name:
      return None
  else:
    name = value.split(':', 1)[0]
    port = value[len(name):]
  if port and not (port[0] == ':' and port[1:].isdigit() and len(port) <= 6):
    return None
  return name or None


def _ip(name: str
        ) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
  try:
    return ipaddress.ip_address(name)
  except ValueError:
    return None


def _machine_names() -> set[str]:
  names = set()
  try:
    hostname = socket.gethostname().lower()
    names |= {hostname, hostname + '.local', socket.getfqdn().lower()}
  except OSError:
    pass
  return {n for n in names if n and n != '.local'}


class HostNames:
  """The names a server on `host` answers to (see the module docstring)."""

  def __init__(self, host: str, extra: Iterable[str] = ()):
    host = host.strip('[]').lower()
    self.any_ip = host in EVERY_INTERFACE
    names = {host} | {n.strip().strip('[]').lower() for n in extra}
    ip = _ip(host)
    if host == 'localhost' or (ip is not None and ip.is_loopback):
      names |= set(LOOPBACK_NAMES)
    if self.any_ip:
      names |= set(LOOPBACK_NAMES) | _machine_names()
    self.names = {n for n in names if n and n not in EVERY_INTERFACE}
    self.ips = {_ip(n) for n in self.names} - {None}

  def allows(self, header: Optional[str]) -> bool:
    """Whether a request with this Host header (name[:port]) is answered."""
    name = _host_name(header or '')
    if name is None:
      return False
    if name in self.names:
      return True
    ip = _ip(name)
    return ip is not None and (self.any_ip or ip in self.ips)

  def describe(self) -> str:
    shown = sorted(f'[{n}]' if ':' in n else n for n in self.names)
    return ', '.join(shown + (['any IP address'] if self.any_ip else []))


class HostCheck:
  """ASGI middleware: 421 for a Host header that is not one of `names`."""

  def __init__(self, app, names: HostNames):
    self.app = app
    self.names = names

  async def __call__(self, scope, receive, send):
    if scope['type'] in ('http', 'websocket'):
      header = None
      for key, value in scope['headers']:
        if key == b'host':
          header = value.decode('latin-1')
          break
      if not self.names.allows(header):
        logging.warning('serve: refused %s %s for Host %r: not a name this '
                        'server listens on (DNS rebinding protection)',
                        scope.get('method', 'WS'), scope['path'][:200],
                        None if header is None else header[:200])
        if scope['type'] == 'websocket':
          await send({'type': 'websocket.close', 'code': 1008})
          return
        await PlainTextResponse(
            f'421 Misdirected Request: this server answers only to '
            f'{self.names.describe()}; Host {header!r:.200} refused '
            f'(DNS rebinding protection; --serve_host adds names).\n',
            status_code=421)(scope, receive, send)
        return
    await self.app(scope, receive, send)


# ------------------------------------------------------------------ results
class Results:
  """PNG bytes of recent results, in memory (oldest dropped past a budget)."""

  def __init__(self, budget: int = RESULT_CACHE_BYTES):
    self.budget = budget
    self._items: collections.OrderedDict[str, tuple[str, bytes]] = (
        collections.OrderedDict())
    self._bytes = 0
    self._lock = threading.Lock()

  def put(self, name: str, data: bytes) -> str:
    key = secrets.token_urlsafe(12)
    with self._lock:
      self._items[key] = (name, data)
      self._bytes += len(data)
      while self._bytes > self.budget and len(self._items) > 1:
        _, (_, old) = self._items.popitem(last=False)
        self._bytes -= len(old)
    return key

  def get(self, key: str) -> Optional[tuple[str, bytes]]:
    with self._lock:
      return self._items.get(key)


def _png(pixels: np.ndarray) -> bytes:
  if pixels.ndim == 3:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode('.png', pixels)
  if not ok:
    raise ValueError('cannot encode the result as PNG')
  return buf.tobytes()


def _clean_name(name: str) -> str:
  name = os.path.basename((name or '').replace('\\', '/'))
  name = re.sub(r'[\x00-\x1f\x7f]', '', name).strip()[:200]
  return name or 'photo'


def _decode_gray(data: bytes, max_pixels: int) -> np.ndarray:
  """The photo's gray (H, W) uint8: all colorizing needs (the RGB copy is
  dropped at once)."""
  return recombine.to_gray(preprocess.decode_image(data,
                                                   max_pixels=max_pixels))


def _encode(gray: np.ndarray, rgb: np.ndarray) -> tuple[bytes, bytes]:
  return _png(gray), _png(rgb)


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({'error': message}, status_code=status)


# ------------------------------------------------------------------ the app
def make_app(models: ModelChoices, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
             results: Optional[Results] = None,
             chroma_upsampling: str = recombine.DEFAULT_UPSAMPLING,
             memory_budget: Optional[int] = None,
             host: str = '127.0.0.1', extra_hosts: Sequence[str] = ()
             ) -> Starlette:
  """The Starlette app (`models` should already hold its first model).

  Args:
    models: the choices of --workdir.
    max_upload_bytes: larger uploads are refused (413).
    results: where result PNGs are kept for the page.
    chroma_upsampling: --chroma_upsampling.
    memory_budget: bytes of photo work at once (`MemoryBudget`); None:
      one photo at the first model's pixel limit.
    host: the address listened on; other Host headers get 421 (`HostNames`).
    extra_hosts: more names to answer to (--serve_host).
  """
  batcher = Batcher(models.batch_size, chroma_upsampling)
  results = results or Results()
  if memory_budget is None:
    memory_budget = photo_bytes(_max_pixels(models.get()), chroma_upsampling)
  budget = MemoryBudget(memory_budget)
  hosts = HostNames(host, [n for n in extra_hosts if n.strip()])
  with open(os.path.join(STATIC_DIR, 'index.html'), 'rb') as f:
    page = f.read()

  async def index(request: Request) -> Response:
    del request
    return Response(page, media_type='text/html; charset=utf-8',
                    headers={'Cache-Control': 'no-store'})

  async def list_models(request: Request) -> Response:
    del request
    return JSONResponse({
        'default': models.default_id,
        'max_upload_bytes': max_upload_bytes,
        'models': [{'id': c.id, 'label': c.label,
                    'info': models.loaded_info(c.id)} for c in models.choices],
    })

  async def colorize_photo(request: Request) -> Response:
    name = _clean_name(request.query_params.get('name', 'photo'))
    model_id = request.query_params.get('model') or models.default_id
    if model_id not in models.by_id:
      return _error(400, f'unknown model {model_id!r}')
    length = request.headers.get('content-length')
    too_big = (f'{name}: the file is larger than the upload limit of '
               f'{max_upload_bytes // 2**20} MB')
    if length is not None and length.isdigit() and int(length) > (
        max_upload_bytes):
      return _error(413, too_big)
    body = bytearray()
    async for chunk in request.stream():
      body.extend(chunk)
      if len(body) > max_upload_bytes:
        return _error(413, too_big)
    data = bytes(body)
    del body
    start = time.time()
    try:
      predictor = await run_in_threadpool(models.get, model_id)
    except (ValueError, FileNotFoundError, OSError) as e:
      logging.error('serve: cannot load model %s: %s', model_id, e)
      return _error(500, f'cannot load the model: {models.hide_paths(str(e))}')
    max_pixels = _max_pixels(predictor)
    size = preprocess.image_size_from_header(data)
    if size is None:  # unknown until decoded: runs alone
      cost = budget.total
    elif min(size) > 0 and size[0] * size[1] <= max_pixels:
      cost = photo_bytes(size[0] * size[1], chroma_upsampling)
    else:  # decode_image refuses it from the header
      cost = 0
    if cost > budget.total:
      return _error(413, f'{name}: a {size[0]}x{size[1]} photo needs about '
                    f'{_mb(cost)} of memory to colorize, more than this '
                    f"server's budget of {_mb(budget.total)} (--serve_memory_mb)")
    async with budget.hold(cost):
      try:
        gray = await run_in_threadpool(_decode_gray, data, max_pixels)
      except ValueError as e:  # BadImageError: the reason is its message
        return _error(400, f'{name}: not usable as a photo: {e}')
      del data
      rgb = await asyncio.wrap_future(batcher.submit(predictor, gray))
      gray_png, rgb_png = await run_in_threadpool(_encode, gray, rgb)
      h, w = rgb.shape[:2]
      del gray, rgb
    stem = os.path.splitext(name)[0] or 'photo'
    return JSONResponse({
        'name': name, 'width': w, 'height': h,
        'gray_url': f'/api/image/{results.put(stem + "_gray.png", gray_png)}',
        'result_url': f'/api/image/{results.put(stem + ".png", rgb_png)}',
        'download_name': stem + '.png',
        'seconds': round(time.time() - start, 3),
        'model_id': model_id,
        'info': model_info(predictor, models.by_id[model_id].source),
    })

  async def image(request: Request) -> Response:
    item = results.get(request.path_params['key'])
    if item is None:
      return _error(404, 'this result is no longer kept on the server: '
                    'upload the photo again')
    filename, data = item
    headers = {'Cache-Control': 'private, max-age=3600'}
    if request.query_params.get('download'):
      ascii_name = filename.encode('ascii', 'replace').decode().replace(
          '"', '_').replace('?', '_')
      headers['Content-Disposition'] = (
          f'attachment; filename="{ascii_name}"; '
          f"filename*=UTF-8''{urllib.parse.quote(filename)}")
    return Response(data, media_type='image/png', headers=headers)

  def on_error(request: Request, exc: Exception) -> Response:
    # uvicorn logs the traceback; the page gets a message, not a crash.
    del request
    return _error(500, f'internal error ({type(exc).__name__}: {exc}); '
                  'the server keeps running')

  return Starlette(
      routes=[Route('/', index),
              Route('/api/models', list_models),
              Route('/api/colorize', colorize_photo, methods=['POST']),
              Route('/api/image/{key}', image)],
      middleware=[Middleware(HostCheck, names=hosts)],
      exception_handlers={Exception: on_error})


def _listen(host: str, port: int) -> socket.socket:
  try:
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
  except (OSError, OverflowError) as e:
    raise ValueError(f'cannot listen on {host}:{port} ({e}); pick another '
                     '--port or --host') from e
  sock.listen(128)
  sock.set_inheritable(True)
  return sock


def run(path: str, *, host: str = '127.0.0.1', port: int = 7860,
        chroma_upsampling: str = recombine.DEFAULT_UPSAMPLING,
        memory_mb: Optional[float] = None, extra_hosts: Sequence[str] = (),
        allowed_families: Sequence[str] = ()) -> None:
  """The --mode=serve command: serves until Ctrl-C / SIGTERM.

  Args:
    path: --workdir (see the module's docstring).
    host, port: where to listen.
    chroma_upsampling: --chroma_upsampling.
    memory_mb: --serve_memory_mb (`make_app`); None: one photo at the first
      model's pixel limit.
    extra_hosts: --serve_host names answered besides the listening ones.
    allowed_families: import paths of families the models may name.
  """
  recombine.check_upsampling(chroma_upsampling)
  memory_budget = memory_budget_bytes(memory_mb)
  start = time.time()
  models = ModelChoices(path, allowed_families=allowed_families)
  sock = _listen(host, port)  # a taken port fails before the slow part
  try:
    predictor = models.get()  # load and compile before serving requests
    app = make_app(models, chroma_upsampling=chroma_upsampling,
                   memory_budget=memory_budget, host=host,
                   extra_hosts=extra_hosts)
  except BaseException:
    sock.close()
    raise
  shown = f'[{host}]' if ':' in host else host
  print(f'serve: {predictor.model_name} step {predictor.step} '
        f'({predictor.image_size} px) from {path}'
        + (f' (+{len(models.choices) - 1} more to choose from)'
           if len(models.choices) > 1 else '')
        + f'; ready in {time.time() - start:.1f} s', flush=True)
  print(f'serve: open http://{shown}:{port}/ (Ctrl-C stops)', flush=True)
  server = uvicorn.Server(uvicorn.Config(app, log_level='warning',
                                         access_log=False))
  try:
    server.run(sockets=[sock])
  except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after shutting down
    pass
  print('serve: stopped', flush=True)


def main(config, args) -> None:
  del config  # the run's own, read from --workdir
  run(args.workdir, host=args.host, port=args.port,
      chroma_upsampling=args.chroma_upsampling, memory_mb=args.serve_memory_mb,
      extra_hosts=args.serve_hosts, allowed_families=args.allow_families)
