"""Adam's update in one pass over memory, on CPUs (adam.cc).

XLA's CPU backend (jaxlib 0.10) has no multi-output fusion: optax.adam's
update becomes one loop per output, and each new moment is computed twice,
in its own loop and again inside the parameter's. The loop that writes a
moment over its donated buffer would clobber what the other still reads,
and the update of a parameter would clobber what a convolution's backward
pass still reads, so XLA copies those buffers first, into freshly mapped
pages: 631 MiB per step of the paper's model at batch 32 under pmap, 214
MiB under shard_map. The custom call here reads each parameter, moment
and gradient once and writes the new parameter and moments in place (6 MiB
of copies under shard_map; under pmap XLA copies its results once more,
so `optim.adam_impl='auto'` leaves pmap on optax: docs/benchmarks.md).
"""

from typing import Any

import jax
import jax.numpy as jnp

from jaxcolor.kernels import library


def update(params: Any, mu: Any, nu: Any, grads: Any, *, lr: jax.Array,
           count: jax.Array, b1: float, b2: float,
           eps: float) -> tuple[Any, Any, Any]:
  """optax.adam's update of float32 trees: (params', mu', nu').

  Args:
    params, mu, nu, grads: trees of one structure, float32 leaves.
    lr: the learning rate of this update, a float32 scalar.
    count: this update's number t, from 1 (optax's incremented count).
    b1, b2, eps: Adam's decays and epsilon.
  """
  why = library.why_unavailable()
  if why:
    raise library.Unavailable(f'Adam on the kernel library: {why}')
  leaves, treedef = jax.tree.flatten(params)
  if not leaves:
    return params, mu, nu
  others = [treedef.flatten_up_to(tree) for tree in (mu, nu, grads)]
  if any(x.dtype != jnp.float32 for x in jax.tree.leaves((params, mu, nu,
                                                          grads))):
    raise TypeError('Adam on the kernel library: float32 leaves only')
  # Computed as optax computes them, so the values are optax's.
  hyper = jnp.stack([jnp.asarray(v, jnp.float32) for v in (
      lr, 1 - b1, b1, 1 - b2, b2, 1 - b1**count, 1 - b2**count, eps)])
  operands, results, aliases = [hyper], [], {}
  for i, leaf in enumerate(zip(leaves, *others)):
    operands.extend(leaf)
    for k in range(3):  # p, mu, nu are updated in place
      aliases[1 + 4 * i + k] = len(results)
      results.append(jax.ShapeDtypeStruct(leaf[k].shape, jnp.float32))
  out = jax.ffi.ffi_call('jaxcolor_adam', results,
                         input_output_aliases=aliases)(*operands)
  return tuple(jax.tree.unflatten(treedef, out[k::3]) for k in range(3))
