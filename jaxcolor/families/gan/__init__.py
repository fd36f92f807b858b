"""The GAN family: the paper's edge/saliency-guided model and SCGAN.

One family, two configs (configs/default.py, configs/scgan_baseline.py):
a U-Net generator on gray (+ Canny edge) emitting RGB (+ saliency), an
optional frozen ResNet-18 fused into it, and a PatchGAN critic.

  state.py     the train state (G and D, their optimiser states, the frozen
               ResNet, the EMA of G) and a fresh one
  optim.py     Adam, the learning-rate schedules, the EMA
  step.py      the model's inputs, `generate`, the losses' wiring, the
               training step (read it aloud), `predict`
  features.py  the ResNet side of the feature cache (prepare's featurizer)
  family.py    `GANFamily`: what the product asks of the model; config
               migration

Opt-in switches beyond the paper, all off in its configs (measured in
docs/results.md):
model.output='chroma' (G predicts chroma on the input's own luminance),
loss.gan (the adversarial objective), loss.l1_rebalance (the L1 weighted
by the rarity of each pixel's true colour), optim.*_lr_schedule (warmup,
cosine or linear decay) and optim.ema_decay (an EMA of G's parameters that
evaluation, samples, colorize and export use).

Images inside are float32 in [-1, 1]; batches arrive as the pipeline's
uint8 maps.
"""

from jaxcolor.families.gan.family import GANFamily

__all__ = ['GANFamily']
