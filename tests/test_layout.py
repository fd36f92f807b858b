"""The package's layers: every import points down, no mode imports a mode.

Read statically (every import statement, those inside functions too), so
the rule holds for the code as written, not just for what one run loads.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'jaxcolor')

# Each group of modules and the groups it may import (itself included).
_BELOW = {
    'runtime': {'runtime'},
    'kernels': {'kernels', 'runtime'},  # native kernels (XLA custom calls)
    'data': {'data', 'runtime'},
    'color': {'color', 'data', 'runtime'},
    'models': {'models', 'kernels', 'color', 'runtime'},
    'core': {'core', 'data', 'runtime'},  # losses, metrics, summaries
    'families': {'families', 'models', 'kernels', 'color', 'core', 'data',
                 'runtime'},
    'shared': {'shared', 'families', 'models', 'kernels', 'color', 'core',
               'data', 'runtime'},  # inference, trainer, records
    'modes': {'shared', 'families', 'models', 'kernels', 'color', 'core',
              'data', 'runtime'},
}


def _group(module: str) -> str:
  parts = module.split('.')
  if parts[1] in _BELOW:
    return parts[1]
  if parts[1] in ('losses', 'metrics', 'summaries'):
    return 'core'
  if parts[1] in ('inference', 'trainer', 'records'):
    return 'shared'
  raise AssertionError(f'{module}: in no layer; add it to tests/test_layout.py')


def _modules() -> dict[str, str]:
  """{dotted module name: file path} of every module under jaxcolor/."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[rel.removesuffix('.__init__')] = path
  return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The jaxcolor modules a file imports (`from a import b` counts as a.b
  when that is a module)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith('jaxcolor'))
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
        'jaxcolor'):
      for a in node.names:
        sub = f'{node.module}.{a.name}'
        found.add(sub if sub in modules else node.module)
  return {m for m in found if m != 'jaxcolor'}


def test_every_import_points_down_and_no_mode_imports_a_mode():
  modules = _modules()
  wrong = []
  for name, path in sorted(modules.items()):
    if name == 'jaxcolor':
      continue
    group = _group(name)
    for imported in sorted(_imports(path, modules)):
      if imported == 'jaxcolor.modes' and name.startswith('jaxcolor.modes.'):
        continue  # the package's own table
      target = _group(imported)
      if target not in _BELOW[group]:
        wrong.append(f'{name} ({group}) imports {imported} ({target})')
      elif group == 'modes' and target == 'modes':
        wrong.append(f'{name} imports the mode {imported}')
  assert not wrong, '\n'.join(wrong)


def test_no_import_cycle():
  modules = _modules()
  graph = {n: _imports(p, modules) & set(modules) for n, p in modules.items()}
  # A package imports its own modules: not an edge back from them.
  graph = {n: {m for m in deps if not n.startswith(m + '.')}
           for n, deps in graph.items()}
  state = {}

  def visit(n, path):
    state[n] = 'open'
    for m in sorted(graph[n]):
      if state.get(m) == 'open':
        raise AssertionError('import cycle: ' + ' -> '.join(path + [n, m]))
      if m not in state:
        visit(m, path + [n])
    state[n] = 'done'

  for n in sorted(graph):
    if n not in state:
      visit(n, [])


def test_every_mode_has_one_entry_point():
  from jaxcolor import modes  # pylint: disable=g-import-not-at-top
  files = sorted(f[:-3] for f in os.listdir(os.path.join(PACKAGE, 'modes'))
                 if f.endswith('.py') and f != '__init__.py')
  assert files == sorted(modes.NAMES)
  for name in modes.NAMES:
    tree = ast.parse(open(os.path.join(PACKAGE, 'modes', name + '.py')).read())
    entry = [n for n in tree.body
             if isinstance(n, ast.FunctionDef) and n.name == 'main']
    assert len(entry) == 1 and [a.arg for a in entry[0].args.args] == [
        'config', 'args'], name
