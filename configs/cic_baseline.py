"""Baseline 2 of the paper (§5.2): Zhang et al. (ECCV 2016) 313-bin colorizer.

Lab L in, a distribution over the 313 in-gamut ab bins out (at 1/4
resolution, softmax), trained with the class-rebalanced multinomial
cross-entropy (soft-encoding: 5 nearest bins, Gaussian sigma 5; rebalancing
lambda 0.5 with the ImageNet prior, or the training set's with
`loss.prior='train'`); Nesterov SGD, lr 0.01; annealed-mean decoding with
T = 0.38. Network: five blocks of 2-3 convs with ReLU and BatchNorm,
up-sampling after the fourth (jaxcolor/models/cic.py has the layer table).
The shared sections come from configs/common.py; the model is
jaxcolor/families/cic.py.

At 64 px (the paper's comparison) the ab map is 16x16; Zhang et al.'s own
size is `--config=configs/cic_baseline.py:256` (256 px in, ab at 64x64);
`:128` gives ab at 32x32. Any multiple of 8 works.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  """Args: arg: the image size after ':' (64 by default, 128 or 256)."""
  config = common.get_config()
  config.data.image_size = common.size_variant(arg, 'configs/cic_baseline.py')
  model = config.model = ml_collections.ConfigDict()
  model.name = 'cic'
  model.widths = (64, 128, 256, 512, 256)   # channels of blocks 1..5
  model.num_convs = (2, 2, 3, 3, 3)         # convs per block
  model.temperature = 0.38                  # annealed-mean decoding

  loss = config.loss = ml_collections.ConfigDict()
  loss.soft_encoding_k = 5          # nearest bins of each ground-truth ab
  loss.soft_encoding_sigma = 5.0    # their Gaussian weights (ab units)
  loss.rebalance_lambda = 0.5       # mix of the prior with a uniform one
  loss.prior = 'imagenet'           # or 'train' (a pass over the data)

  optim = config.optim = ml_collections.ConfigDict()
  optim.learning_rate = 0.01        # Nesterov SGD
  optim.momentum = 0.9
  config.num_epochs = 200
  return config
