"""Quick start: the recommended recipe on the bundled photos, at half width.

configs/recipe.py (the paper's model with chroma output, the non-saturating
GAN loss at a lower weight and an EMA of the generator, at the paper's
learning rates) on the quick start's photos, with the generator and the
critic at half the paper's widths: a step costs a third, so 400 steps of
batch 8 train in under 10 minutes on 2 CPU cores of a Zen 3 (585 s). At
the paper's widths the same 10 minutes buy 160 steps, whose colour is a
warm wash; these 400 give more colour and the first sky blue
(docs/results.md). The paper's exact model on the same photos and its
160-step schedule: configs/quickstart_paper.py.
"""

from configs import quickstart_paper
from configs import recipe


def half_widths(config):
  """Halves the channel widths of G's and D's layers (D's 1-channel output
  stays)."""
  config.model.g_features = tuple(n // 2 for n in config.model.g_features)
  config.model.d_features = tuple(n // 2 for n in config.model.d_features[:-1]
                                  ) + config.model.d_features[-1:]
  return config


def get_config():
  config = half_widths(quickstart_paper.bundled_photos(recipe.get_config()))
  config.num_train_steps = 400
  config.eval_every_steps = 100
  config.image_every_steps = 100
  config.checkpoint_every_steps = 100
  return config
