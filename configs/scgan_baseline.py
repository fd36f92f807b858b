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

SCGAN's own size is 256 px: `--config=configs/scgan_baseline.py:256` (and
`:128`) takes the released code's layout on this model's layers. Its U-Net
has a stride-1 d1 and halves the side down to 1x1, so 9 encoder layers at
256 px (64, 128, 256, 512, 512, 512, 512, 512, 512; 8 at 128 px, the last
512 dropped); its critic is the release's 70x70 PatchGAN
(`PatchDiscriminator70`: k7s1p3, three k3s2p1, two k4s1p1), whose map is
the paper's 30x30 at 256 px (14x14 at 128 px):
  256 -k7s1p3-> 256 -k3s2p1-> 128 -> 64 -> 32 -k4s1p1-> 31 -k4s1p1-> 30.
The layers keep this model's 4x4 kernels in G (the release: 7x7 d1, 3x3
elsewhere) and add no normalisation. The 64-px critic above, given only
a larger data.image_size, maps 128 px to 62x62 and 256 px to 126x126.
"""

from configs import common
from configs import default


def get_config(arg=None):
  """Args: arg: the image size after ':' (64 by default, 128 or 256)."""
  size = common.size_variant(arg, 'configs/scgan_baseline.py')
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
  if size > 64:
    config.data.image_size = size
    config.model.g_features = (64, 128, 256) + (512,) * (
        {128: 5, 256: 6}[size])
    config.model.d_kernel_sizes = (7, 3, 3, 3, 4, 4)
    config.model.d_strides = (1, 2, 2, 2, 1, 1)
    config.model.d_paddings = (3, 1, 1, 1, 1, 1)
  return config
