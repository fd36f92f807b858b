"""Baseline 2 of the paper (§5.2): Zhang et al. (ECCV 2016) 313-bin colorizer.

Lab L in, a distribution over the 313 in-gamut ab bins out (at 1/4
resolution, softmax), trained with the class-rebalanced multinomial
cross-entropy (soft-encoding: 5 nearest bins, Gaussian sigma 5; rebalancing
lambda 0.5 with the ImageNet prior, or the training set's with
`loss.cic_prior='train'`); Nesterov SGD, lr 0.01; annealed-mean decoding
with T = 0.38. Network: five blocks of 2-3 convs with ReLU and BatchNorm,
up-sampling after the fourth (jaxcolor/models/cic.py has the layer table).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'cic'
  config.model.use_resnet = False
  config.model.require_resnet18_weights = False
  config.model.cic_widths = (64, 128, 256, 512, 256)
  config.model.cic_num_convs = (2, 2, 3, 3, 3)
  config.model.cic_temperature = 0.38
  config.loss.cic_k = 5
  config.loss.cic_sigma = 5.0
  config.loss.cic_lambda = 0.5
  config.loss.cic_prior = 'imagenet'  # or 'train'
  config.optim.cic_learning_rate = 0.01
  config.optim.cic_momentum = 0.9
  config.num_epochs = 200
  return config
