"""Every compiled program lowers for GPUs and TPUs (jax.export, no device).

The train step of each family and colorize's model are exported for the
'cuda' and 'tpu' platforms with the convolution forms `conv_impl='auto'`
picks there ('xla'), in float32 and bfloat16: an operation or layout trick
that exists only on the CPU fails here. Lowering checks the program's
operations, dtypes and shardings for those platforms; what only a device
shows (speed, memory, numerics of its kernels) is the device check's
(benchmarks/device_check.sh).
"""

import jax
from jax import export
import numpy as np
import pytest

from jaxcolor import families
from jaxcolor import trainer
from jaxcolor.modes import benchmark
from jaxcolor.runtime import parallel
import helpers

PLATFORMS = ('cuda', 'tpu')
CASES = [(name, size) for size in (64, 256) for name in ('gan', 'scgan', 'cic')]
# The proposed model at 256 px derives no stride-1 encoder layer, and the
# ResNet features join d6's 4 x 4 output.
_AT_256 = {'gan': {'g_stride1_layer': 0, 'fusion_size': 4}}


def _config(name, size, dtype):
  overrides = {'data.image_size': size, 'dtype': dtype}
  if name != 'cic':
    overrides['model.conv_impl'] = 'xla'  # what 'auto' picks off the CPU
  return helpers.TINY[name](**overrides)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('name,size', CASES)
def test_the_train_step_lowers_for_accelerators(name, size, dtype):
  config = _config(name, size, dtype)
  par = parallel.Parallel.create('shard_map')
  family = families.build(config)
  if size == 256:
    for key, value in _AT_256.get(name, {}).items():
      assert config.model[key] == value, key
  batch = benchmark.synthetic_batch(config, np.random.default_rng(0),
                                    config.data.batch_size)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=par.batch_sharding), batch)
  step = trainer.make_train_fn(family, par, config)
  exported = export.export(step, platforms=PLATFORMS)(
      trainer.abstract_state(family, par), batch)
  assert exported.platforms == PLATFORMS
  assert 'stablehlo.convolution' in exported.mlir_module()


@pytest.mark.parametrize('name', ['gan', 'scgan', 'cic'])
def test_colorizes_model_lowers_for_accelerators(name):
  config = _config(name, 64, 'float32')
  family = families.build(config)
  s = config.data.image_size
  inputs = family.host_inputs(np.zeros((8, s, s, 1), np.uint8))
  exported = export.export(jax.jit(family.predict), platforms=PLATFORMS)(
      family.abstract_inference_params(),
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), inputs))
  assert exported.platforms == PLATFORMS
  assert exported.out_avals[0].shape == (8, s, s, 2)
