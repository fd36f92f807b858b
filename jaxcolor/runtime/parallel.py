"""Data parallelism: one per-device step compiled by `pmap` or `jit(shard_map)`.

A step function is written once for one device's share of the batch, with
explicit `lax.pmean(..., AXIS)` over the data axis, and compiled two ways:

- 'pmap': `jax.pmap`; replicated state carries a leading device axis.
- 'shard_map': `jax.jit(jax.shard_map(...))` over a 1-D mesh of all devices;
  replicated state is a global array with sharding `P()`.

Outside the step, state always travels in the mesh-replicated form (global
arrays, `P()`), so checkpoints, evaluation and export do not depend on how
the step was compiled; `to_step_layout`/`from_step_layout` convert.
"""

import dataclasses
import functools
from typing import Any, Callable, Union

from absl import logging
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = 'data'
KINDS = ('pmap', 'shard_map')


def maybe_initialize_distributed(dist_config) -> None:
  """Calls `jax.distributed.initialize` when the config asks for multi-host.

  Empty/negative fields are left to JAX's cluster auto-detection (SLURM,
  TPU pods, the JAX_COORDINATOR_ADDRESS environment variable, ...).
  """
  if not dist_config.enabled:
    return
  kwargs = {}
  if dist_config.coordinator_address:
    kwargs['coordinator_address'] = dist_config.coordinator_address
  if dist_config.num_processes > 0:
    kwargs['num_processes'] = dist_config.num_processes
  if dist_config.process_id >= 0:
    kwargs['process_id'] = dist_config.process_id
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


# The pmap layout's conversions: one compiled program per mesh and tree
# structure (rather than one eager op per array shape), traced once per
# process; each device converts its own copy, nothing is sent.
@functools.partial(jax.jit, static_argnums=0)
def _add_device_axis(mesh: Mesh, tree: Any) -> Any:
  return jax.shard_map(lambda t: jax.tree.map(lambda x: x[None], t),
                       mesh=mesh, in_specs=P(), out_specs=P(AXIS))(tree)


def pmean(tree: Any) -> Any:
  """`lax.pmean(tree, AXIS)` inside a step; on one device the tree itself:
  XLA's CPU backend would still copy every leaf through the all-reduce."""
  if jax.lax.axis_size(AXIS) == 1:
    return tree
  return jax.lax.pmean(tree, AXIS)


@functools.partial(jax.jit, static_argnums=0)
def _drop_device_axis(mesh: Mesh, tree: Any) -> Any:
  # The pmap step keeps its copies equal (its updates are `pmean`-ed), so
  # each device's own copy is the replicated value.
  return jax.shard_map(lambda t: jax.tree.map(lambda x: x[0], t), mesh=mesh,
                       in_specs=P(AXIS), out_specs=P(), check_vma=False)(tree)


@dataclasses.dataclass(frozen=True)
class Parallel:
  """How state and batches are laid out over the devices, and how steps compile."""
  kind: str
  mesh: Mesh

  @classmethod
  def create(cls, kind: str) -> 'Parallel':
    if kind not in KINDS:
      raise ValueError(f'config.parallel must be one of {KINDS}, got {kind!r}')
    mesh = jax.make_mesh((jax.device_count(),), (AXIS,),
                         axis_types=(jax.sharding.AxisType.Auto,))
    return cls(kind=kind, mesh=mesh)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(AXIS))

  # ------------------------------------------------------------ compile
  def compile(self, per_device_fn: Callable, *, donate_state: bool = True,
              batch_output: Union[bool, tuple[bool, ...]] = False,
              stacked: bool = False) -> Callable:
    """Compiles `per_device_fn(state, batch) -> (state, output)`.

    `state` is replicated (step layout) and `batch` sharded on its example
    axis: the leading one, or, with `stacked`, the one after a leading
    axis of k stacked batches (see `put_batch`). `output` is replicated (it
    must be `pmean`/`psum`-ed inside), or, with `batch_output`, per-example
    and sharded like an unstacked batch; for an `output` that is a tuple,
    `batch_output` may say so for each of its items.
    """
    donate = (0,) if donate_state else ()
    if self.kind == 'pmap':
      return jax.pmap(per_device_fn, axis_name=AXIS, donate_argnums=donate)
    spec = lambda per_example: P(AXIS) if per_example else P()
    out_spec = (tuple(map(spec, batch_output))
                if isinstance(batch_output, tuple) else spec(batch_output))
    batch_spec = P(None, AXIS) if stacked else P(AXIS)
    mapped = jax.shard_map(per_device_fn, mesh=self.mesh,
                           in_specs=(P(), batch_spec),
                           out_specs=(P(), out_spec), check_vma=False)
    return jax.jit(mapped, donate_argnums=donate)

  # ------------------------------------------------------------ state layout
  def to_step_layout(self, tree: Any) -> Any:
    """Mesh-replicated global arrays -> the layout the compiled step takes."""
    return tree if self.kind == 'shard_map' else _add_device_axis(self.mesh,
                                                                  tree)

  def from_step_layout(self, tree: Any) -> Any:
    """The compiled step's layout -> mesh-replicated global arrays."""
    if self.kind == 'shard_map':
      return tree
    # Across processes pmap returns process-local arrays (leading axis: this
    # process's devices): the same device buffers, viewed as one global array.
    n, sharding = self.mesh.size, self.batch_sharding

    def as_global(x):
      return jax.make_array_from_single_device_arrays(
          (n,) + x.shape[1:], sharding, [s.data for s in x.addressable_shards])
    return _drop_device_axis(self.mesh, jax.tree.map(as_global, tree))

  # ------------------------------------------------------------ batches
  def put_batch(self, local_batch: dict[str, np.ndarray], *,
                stacked: bool = False) -> dict[str, Any]:
    """This process's batch (numpy, leading axis = per-process batch) -> device.

    The result is the global batch, sharded over all devices of all
    processes. With `stacked`, leaves are (k, per-process batch, ...): k
    batches for one call that runs k steps (`compile(..., stacked=True)`).
    """
    n_local = jax.local_device_count()
    axis = 1 if stacked else 0
    for k, v in local_batch.items():
      if v.shape[axis] % n_local:
        raise ValueError(
            f'batch["{k}"] has {v.shape[axis]} examples, not divisible by the '
            f'{n_local} local devices; choose config.data.batch_size accordingly')
    if self.kind == 'pmap':
      sharding = NamedSharding(self.mesh, P(AXIS))

      def per_device(v):  # device axis first: (n_local, [k,] B / n_local, ...)
        if not stacked:
          return v.reshape((n_local, -1) + v.shape[1:])
        v = v.reshape((v.shape[0], n_local, -1) + v.shape[2:])
        return np.swapaxes(v, 0, 1)
      return jax.tree.map(
          lambda v: jax.make_array_from_process_local_data(
              sharding, per_device(v)), local_batch)
    sharding = (NamedSharding(self.mesh, P(None, AXIS)) if stacked
                else self.batch_sharding)
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(sharding, v),
        local_batch)

  def fetch(self, tree: Any) -> Any:
    """Replicated outputs of the compiled step -> numpy, without `x[0]`.

    Reads each array's first addressable shard: no gather, and it works on
    multi-host arrays.
    """
    def one(x):
      data = np.asarray(x.addressable_data(0))
      return data[0] if self.kind == 'pmap' else data
    return jax.tree.map(one, tree)

  def replicate(self, tree: Any) -> Any:
    """Host or single-device arrays -> mesh-replicated global arrays."""
    return jax.device_put(tree, self.replicated)
