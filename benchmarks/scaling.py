"""How cost and memory grow with the image side: every family at 64, 128
and 256 px, one `main.py --mode=benchmark` process per row.

  python benchmarks/scaling.py --out OUT [--batch 4] [--num_steps 3]
      [--sizes 64,128,256] [--models paper,recipe,scgan,cic]

For each model and size: parameters, XLA FLOPs per image, XLA's
device-memory estimate per image at the compiled batch and the largest
per-device batch that fits 16, 40 and 80 GiB by it
(`config.benchmark.memory_budgets_gib`), images/s on this machine at equal
batch, and each figure over the same model's 64-px row. Writes
OUT/<model>_<size>.json (the benchmark's own JSON) and OUT/scaling.md (the
table), and prints the table. A row whose JSON exists is not run again.

The models (`--models`), each at the sizes its config file names:
  paper   configs/default.py with only data.image_size set: the same
          7-layer network at every size
  recipe  configs/recipe.py:SIZE (8 encoder layers at 256 px)
  scgan   configs/scgan_baseline.py:SIZE (its release's depth per size)
  cic     configs/cic_baseline.py:SIZE
The proposed model's ResNet branch is random (no weights on the machine)
and runs every step on its own 224-px input, as the paper's step does.
"""

import argparse
import json
import os
import subprocess
import sys

import compare_peer  # this folder's: lscpu's model name and flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    'paper': ('configs/default.py', True),  # (config, size set by override)
    'recipe': ('configs/recipe.py', False),
    'scgan': ('configs/scgan_baseline.py', False),
    'cic': ('configs/cic_baseline.py', False),
}
BUDGETS_GIB = (16, 40, 80)


def _command(model: str, size: int, batch: int, num_steps: int,
             out_json: str) -> list[str]:
  config, by_override = MODELS[model]
  args = [sys.executable, 'main.py', '--mode=benchmark',
          f'--config={config}' if by_override else f'--config={config}:{size}',
          f'--config.data.batch_size={batch}',
          f'--config.benchmark.num_steps={num_steps}',
          '--config.benchmark.warmup_steps=1',
          '--config.benchmark.memory_budgets_gib=%s' % (BUDGETS_GIB,),
          f'--config.benchmark.output_json={out_json}']
  if by_override:
    args.append(f'--config.data.image_size={size}')
  return args


def _cpu_name() -> str:
  cpu = compare_peer.cpu_name()
  return f'{cpu["model_name"]} ({", ".join(cpu["flags"]) or "no AVX-512"})'


def _ratio(value, base) -> str:
  return f'{value / base:.2f}' if value and base else '–'


def table(rows: dict, sizes: list[int]) -> str:
  """Markdown: one line per (model, size), ratios against the 64-px row."""
  lines = [
      '| model | size | G / critic / net params (M) | GFLOP/image | '
      'MiB/image at the batch | MiB fixed + MiB/image | batch/device in 16 / '
      '40 / 80 GiB | images/s | × FLOPs | × MiB/image | × time/image |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: '
      '| ---: |']
  for (model, size), r in rows.items():
    base = rows.get((model, min(sizes)))
    step = r.get('step', {})
    params = r.get('parameters', {})
    trained = [params[k] / 1e6 for k in ('generator', 'critic', 'network')
               if k in params]
    fits = step.get('max_batch_per_device_by_gib') or {}
    b_step = (base or {}).get('step', {})
    per_image = step.get('device_memory_per_image_bytes')
    lines.append(
        f'| {model} | {size} | {" / ".join(f"{p:.2f}" for p in trained)} | '
        f'{step["flops_per_image"] / 1e9:.2f} | '
        f'{per_image / 2**20:.1f} | '
        f'{step.get("memory_fixed_bytes", 0) / 2**20:.0f} + '
        f'{step.get("memory_marginal_per_image_bytes", 0) / 2**20:.1f} | '
        f'{" / ".join(str(fits.get(f"{g}", "–")) for g in BUDGETS_GIB)} | '
        f'{step["images_per_s"]:.2f} | '
        f'{_ratio(step["flops_per_image"], b_step.get("flops_per_image"))} | '
        f'{_ratio(step.get("memory_marginal_per_image_bytes"), b_step.get("memory_marginal_per_image_bytes"))} | '
        f'{_ratio(b_step.get("images_per_s"), step["images_per_s"])} |')
  return '\n'.join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True)
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--num_steps', type=int, default=3)
  p.add_argument('--sizes', default='64,128,256')
  p.add_argument('--models', default=','.join(MODELS))
  args = p.parse_args()
  sizes = [int(s) for s in args.sizes.split(',')]
  models = args.models.split(',')
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    sys.exit(f'--models: unknown {", ".join(unknown)}; known: '
             + ', '.join(MODELS))
  os.makedirs(args.out, exist_ok=True)
  rows = {}
  for model in models:
    for size in sizes:
      out_json = os.path.abspath(os.path.join(args.out, f'{model}_{size}.json'))
      if not os.path.exists(out_json):
        cmd = _command(model, size, args.batch, args.num_steps, out_json)
        print('$', ' '.join(cmd[1:]), flush=True)
        done = subprocess.run(cmd, cwd=ROOT, check=False)
        if done.returncode:
          print(f'{model} at {size} px: exit {done.returncode}; row left out',
                flush=True)
          continue
      with open(out_json, encoding='utf-8') as f:
        rows[model, size] = json.load(f)
  text = (f'{_cpu_name()}, {os.cpu_count()} CPU cores; batch {args.batch}, '
          f'{args.num_steps} timed steps after 1 warm-up; ratios against '
          f'each model\'s {min(sizes)}-px row (× MiB/image: the fitted '
          'memory per image; × time/image: seconds per image)\n\n'
          + table(rows, sizes))
  with open(os.path.join(args.out, 'scaling.md'), 'w', encoding='utf-8') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  main()
