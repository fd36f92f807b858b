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

`--workdir` may be a training workdir (one choice per finished checkpoint,
newest first), an export bundle, a step folder, or a folder whose
sub-folders are bundles or workdirs (one choice each). The first choice is
loaded and compiled at start-up; the others when first used (then kept).

This module must not import TensorFlow (the command starts fast).
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import os
import queue
import re
import secrets
import socket
import threading
import time
from typing import Any, Optional
import urllib.parse

from absl import logging
import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
import uvicorn

from jaxcolor.runtime import checkpoint
from jaxcolor import inference
from jaxcolor.color import recombine
from jaxcolor.data import preprocess

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'serve_static')
MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # per photo
RESULT_CACHE_BYTES = 1024 * 1024 * 1024  # PNGs kept for the page to fetch
MAX_LOADED_MODELS = 4
DEFAULT_MAX_PIXELS = 100_000_000
# Decoding, recombining and PNG-encoding big photos at once costs memory.
_PIXEL_WORK = threading.BoundedSemaphore(2)


# ------------------------------------------------------------------ models
@dataclasses.dataclass(frozen=True)
class Choice:
  """One model the page can pick: `path` is what `inference.load` reads."""
  id: str
  label: str
  path: str


def _bundle_label(path: str) -> str:
  try:
    with open(os.path.join(path, inference.BUNDLE_FILE)) as f:
      meta = json.load(f)
    return f'{meta.get("model", "?")}, step {meta.get("step", "?")}'
  except (OSError, ValueError, AttributeError):
    return 'bundle'


def discover(path: str) -> list[Choice]:
  """The models under `path`, the one to load first first.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: nothing under it is a model (the message says what was
      expected).
  """
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


def model_info(predictor) -> dict[str, Any]:
  s = predictor.image_size
  return {
      'model': predictor.model_name, 'step': predictor.step,
      'image_size': s, 'source': predictor.source,
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
               batch_size: int = inference.DEFAULT_BATCH_SIZE):
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
      predictor = inference.load(choice.path, batch_size=self.batch_size)
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
    return model_info(p) if p is not None else None


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
      try:
        rgbs = inference.colorize_photos(jobs[0][0], [j[1] for j in jobs],
                                         self.upsampling)
        for job, rgb in zip(jobs, rgbs):
          job[2].set_result(rgb)
      except Exception as e:  # pylint: disable=broad-except
        for job in jobs:
          job[2].set_exception(e)


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


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
  with _PIXEL_WORK:
    return preprocess.decode_image(data, max_pixels=max_pixels)


def _encode(image: np.ndarray, rgb: np.ndarray) -> tuple[bytes, bytes]:
  with _PIXEL_WORK:
    return _png(recombine.to_gray(image)), _png(rgb)


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({'error': message}, status_code=status)


# ------------------------------------------------------------------ the app
def make_app(models: ModelChoices, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
             results: Optional[Results] = None,
             chroma_upsampling: str = recombine.DEFAULT_UPSAMPLING
             ) -> Starlette:
  """The Starlette app (`models` should already hold its first model)."""
  batcher = Batcher(models.batch_size, chroma_upsampling)
  results = results or Results()
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
    start = time.time()
    try:
      predictor = await run_in_threadpool(models.get, model_id)
    except (ValueError, FileNotFoundError, OSError) as e:
      logging.error('serve: cannot load model %s: %s', model_id, e)
      return _error(500, f'cannot load the model: {e}')
    try:
      image = await run_in_threadpool(_decode, bytes(body),
                                      _max_pixels(predictor))
    except ValueError as e:  # BadImageError: the reason is its message
      return _error(400, f'{name}: not usable as a photo: {e}')
    del body
    rgb = await asyncio.wrap_future(batcher.submit(predictor, image))
    gray_png, rgb_png = await run_in_threadpool(_encode, image, rgb)
    stem = os.path.splitext(name)[0] or 'photo'
    h, w = rgb.shape[:2]
    return JSONResponse({
        'name': name, 'width': w, 'height': h,
        'gray_url': f'/api/image/{results.put(stem + "_gray.png", gray_png)}',
        'result_url': f'/api/image/{results.put(stem + ".png", rgb_png)}',
        'download_name': stem + '.png',
        'seconds': round(time.time() - start, 3),
        'model_id': model_id, 'info': model_info(predictor),
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
        chroma_upsampling: str = recombine.DEFAULT_UPSAMPLING) -> None:
  """The --mode=serve command: serves until Ctrl-C / SIGTERM."""
  recombine.check_upsampling(chroma_upsampling)
  start = time.time()
  models = ModelChoices(path)
  sock = _listen(host, port)  # a taken port fails before the slow part
  try:
    predictor = models.get()  # load and compile before serving requests
    app = make_app(models, chroma_upsampling=chroma_upsampling)
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
      chroma_upsampling=args.chroma_upsampling)
