"""Quick start: the recommended recipe on the bundled photos, small and long.

configs/recipe.py (the paper's model with chroma output, the non-saturating
GAN loss at a lower weight and an EMA of the generator, at the paper's
learning rates) on the quick start's photos, with two changes for a
10-minute run on a CPU:

- a quarter of the paper's channel widths in the generator and the critic
  (16-128 instead of 64-512);
- no ResNet-18 branch (`model.use_resnet=False`): without ImageNet weights
  that branch is random and carries no object knowledge, and at these
  widths it would cost more than the rest of the step (3.5 GFLOP per image
  against 1.9).

A step of batch 8 then costs a fifth of the half-width model's with the
branch (156 ms against 747 ms, `--mode=benchmark` back to back on 2 CPU
cores of a Zen 3), so 1800 steps train in under 10 minutes on 2 CPU cores,
where the paper's widths manage 160 steps, whose colour is a warm wash;
these give object colour (blue sky, green foliage, an orange tiger;
docs/results.md). The paper's exact model on the same photos and its
160-step schedule: configs/quickstart_paper.py.
"""

from configs import quickstart_paper
from configs import recipe


def narrower(config, divisor):
  """Divides the channel widths of G's and D's layers by `divisor` (D's
  1-channel output stays)."""
  config.model.g_features = tuple(n // divisor
                                  for n in config.model.g_features)
  config.model.d_features = tuple(n // divisor
                                  for n in config.model.d_features[:-1]
                                  ) + config.model.d_features[-1:]
  return config


def get_config():
  config = narrower(quickstart_paper.bundled_photos(recipe.get_config()), 4)
  config.model.use_resnet = False
  config.num_train_steps = 1800
  config.eval_every_steps = 450
  config.image_every_steps = 450
  config.checkpoint_every_steps = 450
  config.log_every_steps = 50
  return config
