"""The paper's settings: 64 px, global batch 64, Adam G 1e-4 / D 1e-5.

The shared sections (data, schedule, compute, benchmark) come from
configs/common.py; this file adds the paper's GAN: its model, losses and
optimisers (jaxcolor/families/gan.py). The SCGAN baseline and the quick
start derive from it and change only what they must. Override any key on
the command line, e.g. `--config.data.batch_size=32`; an unknown key is an
error naming the key.
"""

import ml_collections

from configs import common


def get_config():
  """Returns the paper's configuration (edge/saliency-guided multi-path GAN)."""
  config = common.get_config()

  # ---------------------------------------------------------------- model
  model = config.model = ml_collections.ConfigDict()
  model.name = 'edge_saliency_gan'  # or 'scgan' (configs/scgan_baseline.py)
  model.use_edge = True        # input = gray (+ Canny edge)
  model.saliency_head = True   # output = RGB (+ saliency)
  # What G's image channels are: 'rgb' (the paper: it re-predicts the
  # luminance it was given) or 'chroma' (two YCrCb chroma offsets, rebuilt
  # into RGB on the input's own luminance, so every loss still sees RGB;
  # the last layer starts at zero: an untrained G outputs the gray copy).
  model.output = 'rgb'
  model.negative_slope = 0.2   # LeakyReLU
  # Generator encoder widths d1..d7; decoder u1..u6 mirror them, u7 emits
  # the output channels. All kernels 4x4; strides 2 except the layer below.
  model.g_features = (64, 128, 256, 512, 512, 512, 512)
  model.g_kernel_size = 4
  # 1-based encoder layer with stride 1, 0: none; -1: derived from
  # data.image_size (0 where the side is a multiple of 2^7, else 1: 64 px
  # -> 1 as in the paper, 128 and 256 px -> 0; bottleneck 1x1 at 64 and
  # 128 px, 2x2 at 256 px with these 7 layers).
  model.g_stride1_layer = -1
  # ResNet-18 branch: layer4 features resized to fusion_size x fusion_size and
  # concatenated to the output of encoder layer `fusion_layer` (1-based).
  model.use_resnet = True
  model.fusion_layer = 6
  # 0: d_{fusion_layer}'s side at data.image_size (2 at 64 and 128 px, as
  # in the paper; 4 at 256 px).
  model.fusion_size = 0
  model.resnet_input_size = 224
  model.resnet18_weights = ''  # Flax file from `python -m jaxcolor.models.convert_resnet18`
  model.require_resnet18_weights = True  # the paper uses ImageNet weights
  model.freeze_resnet = True
  # (config.data.use_feature_cache computes the branch's features once.)
  # PatchGAN critic: 6 convs on gray + RGB; patch map 14x14 at 64 px,
  # 30x30 at 128, 62x62 at 256 (jaxcolor/models/patchgan.py).
  model.d_features = (64, 128, 256, 512, 512, 1)
  model.d_kernel_sizes = (4, 4, 3, 3, 4, 4)
  model.d_strides = (2, 2, 1, 1, 1, 1)
  model.d_paddings = (1, 1, 1, 1, 1, 1)
  # How the convolutions (G's, D's and the ResNet branch's) are computed:
  # 'fast' (per-layer forms that suit XLA CPU, jaxcolor/models/conv_impl.py),
  # 'phase' (XLA convs, phase transposed convs), 'xla' (XLA's conv and
  # conv_transpose), 'mm' (every pass a matmul, over patches or taps, with
  # float32 accumulation: in bfloat16, the form XLA CPU runs on bfloat16
  # matmul kernels), 'dnnl' (oneDNN's convolutions as XLA custom calls, on
  # CPUs; built by `python -m jaxcolor.kernels.build`), 'winograd' ('dnnl',
  # with the wide stride-1 3x3 and 4x4 convolutions by Winograd's method,
  # conv_impl.winograd_pays), or 'auto' ('xla' on
  # GPUs and TPUs; on CPUs 'fast', or the first runnable form a measured
  # rule names for the dtype and CPU flags, models.FASTER_THAN_FAST). Same
  # function and parameters each way.
  model.conv_impl = 'auto'
  # One generator forward per step whose VJP serves the generator update
  # (False: run it again for the update; same result, more work).
  model.reuse_generator_forward = True

  # ---------------------------------------------------------------- losses
  loss = config.loss = ml_collections.ConfigDict()
  loss.l1_weight = 1.0
  loss.gan_weight = 0.5
  loss.saliency_weight = 0.05
  # WGAN-GP term on the critic, lambda * E[(|grad D(x_hat)| - 1)^2] at random
  # interpolates of real and generated RGB (0 = off, as in the paper).
  loss.gradient_penalty_weight = 0.0
  # Adversarial objective, one critic for all (it emits logits): 'paper'
  # (E[D(fake)] − E[D(real)] on sigmoid probabilities, G: −E[D(G(x))]),
  # 'nonsaturating' (BCE), 'hinge' or 'lsgan' (jaxcolor/losses.py).
  loss.gan = 'paper'
  # Class-rebalanced L1: each pixel's L1 weighted by Zhang et al.'s
  # rebalancing weight of its true colour's ab bin (ImageNet prior),
  # w ∝ ((1 - lambda) p̃ + lambda / 313)^-1, so rare, saturated colours weigh
  # more than the grays and browns that L1 alone regresses to. Off in the
  # paper; lambda = 1 weighs all colours alike.
  loss.l1_rebalance = False
  loss.l1_rebalance_lambda = 0.5

  # ---------------------------------------------------------------- optimisers
  optim = config.optim = ml_collections.ConfigDict()
  optim.g_learning_rate = 1e-4
  optim.d_learning_rate = 1e-5
  optim.b1 = 0.9
  optim.b2 = 0.999
  # Learning-rate schedules, per optimiser: 'constant' (the paper),
  # 'cosine' or 'linear' decay to end_lr_fraction * peak at decay_steps
  # (0: num_train_steps), after a linear warmup of warmup_steps (shared).
  optim.g_lr_schedule = 'constant'
  optim.d_lr_schedule = 'constant'
  optim.warmup_steps = 0
  optim.decay_steps = 0
  optim.end_lr_fraction = 0.0
  # EMA of G's parameters, used by evaluation, samples, colorize and export
  # (0 = off, the paper); ema_warmup: decay min(ema_decay, (1+t)/(10+t)).
  optim.ema_decay = 0.0
  optim.ema_warmup = True
  # How an Adam update is computed, same values up to rounding: 'auto' (the
  # kernel library's one pass in place on CPUs where it is built, under
  # parallel='shard_map'; else optax), 'optax', 'kernel'
  # (jaxcolor/kernels/adam.py).
  optim.adam_impl = 'auto'

  return config
