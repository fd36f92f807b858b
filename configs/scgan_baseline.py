"""Baseline 1 of the paper (§5.1): an SCGAN-style U-Net GAN.

The paper's description, on the same code as the proposed model with its
extras switched off: gray (1 channel) in, RGB out; a U-Net of 7 down and 7 up
4x4 convs with skips, LeakyReLU and tanh; no edge input, no ResNet branch, no
saliency head. Generator loss L1 - 0.05 * mean D(fake); critic loss
mean D(fake) - mean D(real); Adam, G 2e-4, D 1e-3.

Critic: six convs on gray ⊕ RGB with a 30x30 patch map, the size the paper
states for its 64x64 (tiny ImageNet) inputs:
  64 -k4s2p1-> 32 -k3s1p0-> 30 -k3s1p1-> 30 -k3s1p1-> 30 -k3s1p1-> 30 -k3s1p1-> 30.

How this differs from SCGAN's released code (Zhao et al., 2020): that code
also trains a saliency head (weight 0.5), a VGG perceptual loss (weight 5),
uses WGAN-GP and spectral normalisation, and a GAN weight of 0.05. Here the
GAN weight is `loss.gan_weight`, the gradient penalty is
`loss.gradient_penalty_weight` (e.g. 10 for WGAN-GP), and the saliency head
can be switched on with `model.saliency_head=True` and
`loss.saliency_weight`; the perceptual loss and spectral normalisation are
not implemented.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'scgan'
  config.model.use_edge = False
  config.model.use_resnet = False
  config.model.saliency_head = False
  config.model.require_resnet18_weights = False
  config.model.d_features = (64, 128, 256, 512, 512, 1)
  config.model.d_kernel_sizes = (4, 3, 3, 3, 3, 3)
  config.model.d_strides = (2, 1, 1, 1, 1, 1)
  config.model.d_paddings = (1, 0, 1, 1, 1, 1)
  config.loss.l1_weight = 1.0
  config.loss.gan_weight = 0.05
  config.loss.saliency_weight = 0.0
  config.optim.g_learning_rate = 2e-4
  config.optim.d_learning_rate = 1e-3
  return config
