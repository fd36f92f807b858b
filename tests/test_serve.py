"""--mode=serve: a real server (main.py in a subprocess) driven by a real
headless Chromium (Debian's chromium + chromium-driver, through Selenium).

The browser uploads photos through the page's file input, waits for the
page to show each result or message, and the test checks the pixels the page
offers for download against --mode=colorize's output for the same file.
"""

import asyncio
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from unittest import mock

import cv2
import numpy as np
import portpicker
import pytest

import helpers
import imagefactory
from jaxcolor.modes import colorize
from jaxcolor import inference
from jaxcolor.modes import serve
from jaxcolor.color import recombine
from jaxcolor.modes import export

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
STARTUP_TIMEOUT_S = 180
RESULT_TIMEOUT_S = 90
MEMORY_BUDGET_MB = 64  # the test server's: a 3000x3000 photo is past it

SERVER = helpers.MAIN_REPORTING_TF


# ------------------------------------------------------------------ files
def header_only_png(width: int, height: int) -> bytes:
  """A PNG whose IHDR claims width x height, with no pixel data."""
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  chunk = (struct.pack('>I', len(ihdr)) + b'IHDR' + ihdr +
           struct.pack('>I', zlib.crc32(b'IHDR' + ihdr)))
  return b'\x89PNG\r\n\x1a\n' + chunk


def odd_photo() -> np.ndarray:
  """A real photo at an odd size: 333 wide, 517 high."""
  return cv2.resize(imagefactory.sample_rgb(0), (333, 517),
                    interpolation=cv2.INTER_CUBIC)


def read_png_rgb(data: bytes) -> np.ndarray:
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  assert img is not None and img.ndim == 3 and img.shape[2] == 3, (
      None if img is None else img.shape)
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def colorize_outputs(model_path, folder, out_dir) -> dict[str, np.ndarray]:
  """--mode=colorize on `folder` (in-process): {input name: RGB output}."""
  colorize.run(model_path, str(folder), str(out_dir))
  return {name: cv2.cvtColor(cv2.imread(str(out_dir / (
      os.path.splitext(name)[0] + '.png'))), cv2.COLOR_BGR2RGB)
          for name in os.listdir(folder)}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope='module')
def model_folder(tmp_path_factory):
  """A folder of two bundles: a_scgan (the default) and b_cic."""
  root = tmp_path_factory.mktemp('serve_models')
  export.export(helpers.untrained('scgan', tmp_path_factory),
                   str(root / 'a_scgan'))
  export.export(helpers.untrained('cic', tmp_path_factory),
                   str(root / 'b_cic'))
  return root


@pytest.fixture(scope='module')
def server(model_folder, tmp_path_factory):
  """main.py --mode=serve on a free port; killed at the end whatever happens."""
  port = portpicker.pick_unused_port()
  log_path = tmp_path_factory.mktemp('serve_log') / 'server.log'
  log = open(log_path, 'w')
  proc = subprocess.Popen(
      [sys.executable, '-c', SERVER, '--mode=serve',
       f'--workdir={model_folder}', f'--port={port}',
       f'--serve_memory_mb={MEMORY_BUDGET_MB}'],
      cwd=helpers.ROOT, stdout=log, stderr=subprocess.STDOUT,
      env=dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2'))
  url = f'http://127.0.0.1:{port}'
  srv = {'proc': proc, 'url': url, 'port': port, 'log': log_path}
  try:
    deadline = time.time() + STARTUP_TIMEOUT_S
    while True:
      if proc.poll() is not None:
        pytest.fail(f'the server exited ({proc.returncode}) at start-up:\n'
                    f'{log_path.read_text()}')
      try:
        with urllib.request.urlopen(url + '/api/models', timeout=5) as r:
          srv['models'] = json.load(r)
        break
      except (urllib.error.URLError, ConnectionError, TimeoutError):
        if time.time() > deadline:
          pytest.fail(f'the server did not answer in {STARTUP_TIMEOUT_S} s:\n'
                      f'{log_path.read_text()}')
        time.sleep(0.5)
    yield srv
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope='module')
def downloads(tmp_path_factory):
  return tmp_path_factory.mktemp('serve_downloads')


@pytest.fixture(scope='module')
def chromium():
  """Fails (not skips) without Debian's Chromium: CI (.ci/run) installs it."""
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
  if missing:
    pytest.fail(f'{" and ".join(missing)} missing: the serve tests need '
                'Debian\'s headless browser: apt-get install -y chromium '
                'chromium-driver (.ci/run installs them)', pytrace=False)


@pytest.fixture(scope='module')
def browser(chromium, server, downloads, tmp_path_factory):
  """Headless Chromium (Debian's, through Selenium) on the server's page."""
  del chromium
  # pylint: disable=g-import-not-at-top
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common import selenium_manager
  # pylint: enable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ('--headless=new', '--no-sandbox', '--disable-gpu',
              '--disable-dev-shm-usage', '--window-size=1200,1000',
              f'--user-data-dir={tmp_path_factory.mktemp("chromium")}'):
    options.add_argument(arg)
  options.add_experimental_option('prefs', {
      'download.default_directory': str(downloads),
      'download.prompt_for_download': False})
  service = Service(executable_path=CHROMEDRIVER)
  # Nothing may be downloaded: Selenium Manager (which fetches browsers and
  # drivers) must not even run.
  with mock.patch.dict(os.environ, {'SE_OFFLINE': 'true'}), mock.patch.object(
      selenium_manager.SeleniumManager, 'binary_paths',
      side_effect=AssertionError('Selenium Manager was called')):
    driver = webdriver.Chrome(options=options, service=service)
  try:
    driver.set_script_timeout(60)
    driver.get(server['url'] + '/')
    wait_for(driver, lambda d: d.find_element('id', 'model').get_attribute(
        'value') == server['models']['default'])
    yield driver
  finally:
    driver.quit()


def wait_for(driver, condition, timeout=RESULT_TIMEOUT_S):
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


# ------------------------------------------------------------------ the page
def upload(driver, paths) -> list:
  """Picks `paths` in the page's file input; waits until the page shows a
  result or a message for each; their cards, in `paths` order."""
  first = len(driver.find_elements('css selector', '.card'))
  driver.find_element('id', 'file').send_keys('\n'.join(str(p) for p in paths))
  ids = [f'card-{first + i}' for i in range(len(paths))]

  def settled(d):
    cards = [d.find_element('id', i) for i in ids]
    if all(c.get_attribute('data-state') in ('done', 'error') for c in cards):
      return cards
    return False
  cards = wait_for(driver, settled)
  assert [c.get_attribute('data-name') for c in cards] == [
      os.path.basename(str(p)) for p in paths]
  return cards


def message(card) -> str:
  assert card.get_attribute('data-state') == 'error', card.text
  return card.find_element('css selector', '.message').text


def offered_download(driver, server, card) -> tuple[np.ndarray, bytes]:
  """The card's download link: (its PNG's pixels as the page holds them,
  the bytes of the same result fetched from the server)."""
  assert card.get_attribute('data-state') == 'done', card.text
  link = card.find_element('css selector', 'a.download')
  href = link.get_attribute('href')
  assert href.startswith('blob:'), href
  data = base64.b64decode(driver.execute_async_script(
      'const done = arguments[arguments.length - 1];'
      'fetch(arguments[0]).then(r => r.blob()).then(b => {'
      '  const f = new FileReader();'
      '  f.onload = () => done(f.result.split(",")[1]);'
      '  f.readAsDataURL(b); });', href))
  with urllib.request.urlopen(server['url'] + link.get_attribute(
      'data-url')) as r:
    assert r.headers['Content-Type'] == 'image/png'
    assert 'attachment' in r.headers['Content-Disposition']
    served = r.read()
  assert served == data
  return read_png_rgb(data), data


def shown_size(card, cls):
  img = card.find_element('css selector', f'img.{cls}')
  return img.get_property('naturalWidth'), img.get_property('naturalHeight')


# ------------------------------------------------------------------ HTTP
def request(server, method, path, host, body=None):
  """One request with this Host header (None: none at all); (status,
  content type, body)."""
  conn = http.client.HTTPConnection('127.0.0.1', server['port'], timeout=60)
  try:
    conn.putrequest(method, path, skip_host=True,
                    skip_accept_encoding=True)
    if host is not None:
      conn.putheader('Host', host)
    conn.putheader('Content-Length', str(len(body or b'')))
    conn.endheaders(body)
    r = conn.getresponse()
    return r.status, r.getheader('Content-Type'), r.read()
  finally:
    conn.close()


def strings(value):
  """Every string in a JSON value."""
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from strings(v)
  elif isinstance(value, list):
    for v in value:
      yield from strings(v)


# ------------------------------------------------------------------ tests
def test_discover_lists_checkpoints_bundles_and_folders(tmp_path,
                                                        tmp_path_factory,
                                                        model_folder):
  run = helpers.untrained('scgan', tmp_path_factory)
  workdir = tmp_path / 'run'
  for step in ('0', '3'):
    shutil.copytree(os.path.join(run, 'checkpoints', '0'),
                    workdir / 'checkpoints' / step)
  choices = serve.discover(str(workdir))
  assert [c.label for c in choices] == ['step 3', 'step 0']  # newest first
  assert choices[0].path == str(workdir / 'checkpoints' / '3')
  assert [c.source for c in choices] == ['run/checkpoints/3',
                                         'run/checkpoints/0']
  in_folder = serve.discover(str(model_folder) + os.sep)
  assert [c.label for c in in_folder] == [
      'a_scgan (scgan, step 0)', 'b_cic (cic, step 0)']
  assert [c.source for c in in_folder] == [
      f'{model_folder.name}/a_scgan', f'{model_folder.name}/b_cic']
  (bundle,) = serve.discover(str(model_folder / 'b_cic'))
  assert (bundle.path, bundle.source) == (str(model_folder / 'b_cic'), 'b_cic')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='is not a model'):
    serve.discover(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    serve.discover(str(tmp_path / 'nope'))


def test_startup_errors_are_one_line(tmp_path, server, model_folder):
  (tmp_path / 'empty').mkdir()
  for args, env, want in (
      ([f'--workdir={tmp_path / "nope"}'], {}, 'does not exist'),
      ([f'--workdir={tmp_path / "empty"}'], {}, 'is not a model'),
      ([f'--workdir={model_folder}', f'--port={server["port"]}'], {},
       f'cannot listen on 127.0.0.1:{server["port"]}'),
      ([f'--workdir={model_folder}', '--serve_memory_mb=-1'], {},
       '--serve_memory_mb=-1: expected a positive number of MB')):
    result = helpers.run_main('--mode=serve', *args, timeout=120, env=env)
    assert result.returncode == 1, result.stderr
    errors = [l for l in result.stderr.splitlines() if ' main.py:' in l]
    assert len(errors) == 1 and want in errors[0], result.stderr
    assert 'Traceback' not in result.stderr


def test_page_shows_model_and_colorizes_like_colorize_mode(
    browser, server, model_folder, downloads, tmp_path):
  info = browser.find_element('id', 'model-info').text
  assert 'scgan, step 0' in info and 'works at 64x64 px' in info, info
  assert 'full-resolution luminance' in info
  (tmp_path / 'in').mkdir()
  photo = imagefactory.write(str(tmp_path / 'in' / 'odd.jpg'),
                             imagefactory.jpeg_bytes(odd_photo()))
  want = colorize_outputs(str(model_folder / 'a_scgan'), tmp_path / 'in',
                          tmp_path / 'out')['odd.jpg']
  assert want.shape == (517, 333, 3)

  (card,) = upload(browser, [photo])
  got, data = offered_download(browser, server, card)
  assert got.shape == (517, 333, 3)
  np.testing.assert_array_equal(got, want)
  assert shown_size(card, 'result') == (333, 517)
  assert shown_size(card, 'gray') == (333, 517)
  gray_url = card.find_element('css selector', 'img.gray').get_attribute('src')
  with urllib.request.urlopen(gray_url) as r:
    gray = cv2.imdecode(np.frombuffer(r.read(), np.uint8),
                        cv2.IMREAD_UNCHANGED)
  np.testing.assert_array_equal(
      gray, recombine.to_gray(inference.read_photo(photo, 10**8)))
  # The download link saves the same PNG.
  link = card.find_element('css selector', 'a.download')
  assert link.get_attribute('download') == 'odd.png'
  link.click()
  saved = downloads / 'odd.png'
  wait_for(browser, lambda d: saved.exists() and saved.read_bytes() == data,
           timeout=30)

  artifacts = os.environ.get('TEST_ARTIFACTS_DIR') or str(tmp_path)
  os.makedirs(artifacts, exist_ok=True)
  assert browser.save_screenshot(os.path.join(artifacts, 'serve_page.png'))


def test_bad_and_odd_inputs_get_messages_or_results(browser, server,
                                                    model_folder, tmp_path):
  rgb = imagefactory.sample_rgb(3)
  odd = tmp_path / 'odd'  # usable: must match --mode=colorize
  odd.mkdir()
  for name, make in (('gray.png', imagefactory.gray_png),
                     ('rgba.png', imagefactory.rgba_png),
                     ('deep16.png', imagefactory.png16)):
    imagefactory.write(str(odd / name), make(rgb))
  imagefactory.write(str(odd / 'good.jpg'), imagefactory.jpeg_bytes(
      odd_photo()))
  want = colorize_outputs(str(model_folder / 'a_scgan'), odd, tmp_path / 'out')
  bad = tmp_path / 'bad'
  bad.mkdir()
  imagefactory.write(str(bad / 'text.jpg'),
                     b'This is a text file, not a JPEG.\n' * 20)
  imagefactory.write(str(bad / 'empty.jpg'), b'')
  imagefactory.write(str(bad / 'huge.png'), header_only_png(20000, 20000))
  # Inside the pixel limit, past the server's memory budget: refused from
  # its header (were it decoded, the message would be 'not decodable').
  imagefactory.write(str(bad / 'wide.png'), header_only_png(3000, 3000))
  with open(bad / 'big.jpg', 'wb') as f:  # sparse: past the upload limit
    f.truncate(serve.MAX_UPLOAD_BYTES + 1)

  cards = upload(browser, [bad / 'text.jpg', bad / 'empty.jpg',
                           bad / 'huge.png', bad / 'big.jpg',
                           bad / 'wide.png',
                           odd / 'gray.png', odd / 'rgba.png',
                           odd / 'deep16.png'])
  assert 'not a decodable image' in message(cards[0])
  assert 'empty file (0 bytes)' in message(cards[1])
  assert 'too large: 20000x20000' in message(cards[2])
  assert 'max_image_pixels' in message(cards[2])
  assert 'larger than the upload limit' in message(cards[3])
  assert message(cards[4]) == (
      f'wide.png: a 3000x3000 photo needs about '
      f'{3000 * 3000 * serve.BYTES_PER_PIXEL["bilinear"] / 2**20:,.0f} MB of '
      f"memory to colorize, more than this server's budget of "
      f'{MEMORY_BUDGET_MB} MB (--serve_memory_mb)')
  for card, name in zip(cards[5:], ('gray.png', 'rgba.png', 'deep16.png')):
    got, _ = offered_download(browser, server, card)
    np.testing.assert_array_equal(got, want[name], err_msg=name)
  assert server['proc'].poll() is None, 'the server died'

  # A body past the limit sent anyway (not through the page): 413 + message.
  conn = http.client.HTTPConnection('127.0.0.1', server['port'], timeout=30)
  conn.putrequest('POST', '/api/colorize?name=big.jpg')
  conn.putheader('Content-Length', str(serve.MAX_UPLOAD_BYTES + 1))
  conn.endheaders()
  conn.send(b'\xff\xd8' + b'\0' * 65536)
  response = conn.getresponse()
  assert response.status == 413
  assert 'upload limit' in json.loads(response.read())['error']
  conn.close()

  assert server['proc'].poll() is None, 'the server died'
  (card,) = upload(browser, [odd / 'good.jpg'])  # still serving
  got, _ = offered_download(browser, server, card)
  np.testing.assert_array_equal(got, want['good.jpg'])


def test_model_selector_loads_another_model(browser, server, model_folder,
                                            tmp_path):
  from selenium.webdriver.support.ui import Select  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'in'
  folder.mkdir()
  photo = imagefactory.write(str(folder / 'p.jpg'),
                             imagefactory.jpeg_bytes(odd_photo()))
  want = colorize_outputs(str(model_folder / 'b_cic'), folder,
                          tmp_path / 'out')['p.jpg']
  select = Select(browser.find_element('id', 'model'))
  assert [o.text for o in select.options] == [
      'a_scgan (scgan, step 0)', 'b_cic (cic, step 0)']
  select.select_by_visible_text('b_cic (cic, step 0)')
  assert 'loads on first use' in browser.find_element('id', 'model-info').text
  (card,) = upload(browser, [photo])
  got, _ = offered_download(browser, server, card)
  np.testing.assert_array_equal(got, want)
  assert 'cic step 0' in card.text
  wait_for(browser, lambda d: 'cic, step 0' in d.find_element(
      'id', 'model-info').text)
  select.select_by_index(0)


def test_memory_budget_admits_in_order_and_never_overdraws():
  """Photo work holds its bytes; a waiter is not overtaken by a smaller
  one behind it; a cancelled waiter holds nothing."""

  async def scenario():
    budget = serve.MemoryBudget(10)
    log, gates, tasks = [], {}, {}

    async def job(key, amount):
      async with budget.hold(amount):
        assert budget.used <= budget.total
        log.append('+' + key)
        await gates[key].wait()
      log.append('-' + key)

    async def settle():
      for _ in range(20):
        await asyncio.sleep(0)

    async def start(key, amount):
      gates[key] = asyncio.Event()
      tasks[key] = asyncio.create_task(job(key, amount))
      await settle()

    await start('a', 6)
    await start('b', 6)  # does not fit: waits
    await start('c', 1)  # would fit, but b came first
    await start('x', 3)  # cancelled while waiting
    await start('d', 50)  # more than the total: alone, once all is free
    await start('z', 0)  # nothing to hold: never waits
    assert log == ['+a', '+z'] and budget.used == 6
    gates['z'].set()
    await settle()
    assert log == ['+a', '+z', '-z']
    tasks['x'].cancel()
    await settle()
    assert tasks['x'].cancelled() and budget.used == 6
    gates['a'].set()
    await settle()
    assert log[3:] == ['-a', '+b', '+c'] and budget.used == 7
    gates['b'].set()
    await settle()
    assert log[-1] == '-b' and budget.used == 1  # d waits for c
    gates['c'].set()
    await settle()
    assert log[-2:] == ['-c', '+d'] and budget.used == 10
    gates['d'].set()
    await settle()
    assert log[-1] == '-d' and budget.used == 0
    assert not budget._waiters  # pylint: disable=protected-access

  asyncio.run(scenario())


def test_host_names_of_each_listening_address():
  loopback = serve.HostNames('127.0.0.1')
  for host in ('localhost', 'localhost:7860', '127.0.0.1', '127.0.0.1:1',
               '[::1]', '[::1]:7860', 'LocalHost:7860', '[0:0:0:0:0:0:0:1]'):
    assert loopback.allows(host), host
  for host in ('evil.example', 'evil.example:7860', '127.0.0.1.nip.io',
               'localhost.evil.example', '10.0.0.1', '::1', 'localhost:',
               'localhost:80:80', '[::1', '', None):
    assert not loopback.allows(host), host
  assert serve.HostNames('::1').names == serve.HostNames('localhost').names
  lan = serve.HostNames('192.168.1.5', extra=['photos.example'])
  assert lan.allows('192.168.1.5:7860') and lan.allows('photos.example')
  assert not lan.allows('localhost') and not lan.allows('10.0.0.1')
  every = serve.HostNames('0.0.0.0')
  assert every.allows('10.0.0.1:7860') and every.allows('[fe80::1]')
  assert every.allows('localhost') and every.allows(socket.gethostname())
  assert not every.allows('evil.example')


def test_forged_host_headers_are_refused(server):
  """DNS rebinding: a page of evil.example, its name re-pointed at
  127.0.0.1, sends Host: evil.example:PORT. Refused, whatever the route."""
  port = server['port']
  before = server['log'].read_text().count('serve: refused')
  forged = [('GET', '/api/models', f'evil.example:{port}'),
            ('GET', '/', 'evil.example'),
            ('GET', '/api/image/x', f'127.0.0.1.nip.io:{port}'),
            ('POST', '/api/colorize?name=a.jpg', 'localhost.evil.example'),
            ('GET', '/api/models', '[::1].evil.example')]
  photo = imagefactory.jpeg_bytes(odd_photo())
  for method, path, host in forged:
    status, kind, body = request(server, method, path, host,
                                 photo if method == 'POST' else None)
    assert status == 421, (host, status, body)
    assert kind.startswith('text/plain'), kind
    assert b'DNS rebinding' in body and b'answers only to' in body, body
  for host in (f'localhost:{port}', f'127.0.0.1:{port}', '127.0.0.1',
               f'[::1]:{port}', 'localhost'):
    status, _, body = request(server, 'GET', '/api/models', host)
    assert status == 200, (host, status, body)
  log = server['log'].read_text()
  # No Host at all: uvicorn (h11) refuses it before the app.
  assert request(server, 'GET', '/api/models', None)[0] == 400
  log = server['log'].read_text()
  assert log.count('serve: refused') - before == len(forged), log
  assert f"for Host 'evil.example:{port}'" in log
  assert 'Traceback' not in log, log


def test_api_shows_no_absolute_paths(server, model_folder):
  status, _, body = request(server, 'POST', '/api/colorize?name=p.jpg',
                            f'localhost:{server["port"]}',
                            imagefactory.jpeg_bytes(odd_photo()))
  assert status == 200, body
  result = json.loads(body)
  assert result['info']['source'] == f'{model_folder.name}/a_scgan'
  status, _, body = request(server, 'GET', '/api/models', '127.0.0.1')
  listing = json.loads(body)
  assert [m['info']['source'] for m in listing['models'] if m['info']][0] == (
      f'{model_folder.name}/a_scgan')
  for value in list(strings(result)) + list(strings(listing)):
    assert not value.startswith(os.sep) or value.startswith('/api/'), value
    assert str(model_folder.parent) not in value, value


def test_zz_ctrl_c_stops_cleanly_and_no_tensorflow_was_imported(server):
  """Runs last: stops the server. The whole serve path (start-up, every
  request above) never imported TensorFlow."""
  proc = server['proc']
  assert proc.poll() is None, server['log'].read_text()
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=60) == 0, server['log'].read_text()
  log = server['log'].read_text()
  assert 'TF_MODULES []' in log, log
  assert 'serve: stopped' in log
  assert 'Traceback' not in log, log
