"""Quick start: the recommended recipe on the bundled sample photos.

configs/recipe.py (the paper's model with chroma output, the non-saturating
GAN loss at a lower weight, higher learning rates with warmup and cosine
decay, and an EMA of the generator) on the quick start's data and schedule:
160 steps of batch 8, about 11 minutes on 2 CPU cores of a Zen 3 (675 s).
The paper's exact model on the same data: configs/quickstart_paper.py.
"""

from configs import quickstart_paper
from configs import recipe


def get_config():
  return quickstart_paper.bundled_photos(recipe.get_config())
