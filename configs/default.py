"""The paper's settings: 64 px, global batch 64, Adam G 1e-4 / D 1e-5.

Every knob of the product lives here; the other configs derive from this one
and change only what they must. Override any key on the command line, e.g.
`--config.data.batch_size=32`; an unknown key is an error naming the key.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the paper's configuration (edge/saliency-guided multi-path GAN)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---------------------------------------------------------------- data
  data = config.data = ml_collections.ConfigDict()
  data.train_dir = ''          # image folder (recursive); Flickr30k/ImageNet as-is
  data.val_dir = ''            # optional; else a hash split of train_dir
  data.val_fraction = 0.05     # share of train_dir held out when val_dir is empty
  data.prepared_dir = ''       # ArrayRecord shards written by --mode=prepare
  data.image_size = 64         # training resolution (square)
  data.random_crop = False     # else resize shorter side + centre crop
  data.random_flip = False     # horizontal flip
  # Canny on the 0..255 grayscale image at training size. 100/200 (the 1:2
  # ratio Canny recommends) keeps object outlines and drops most texture at
  # 64 px; lower thresholds fill small images with texture edges.
  data.canny_low = 100
  data.canny_high = 200
  data.saliency = 'spectral_residual'  # or 'fine_grained' (cv2.saliency)
  data.batch_size = 64         # global batch, split across processes
  data.num_workers = 2         # Grain worker processes (0 = in-process)
  data.prefetch_buffer_size = 4  # batches per worker read ahead
  data.max_image_pixels = 100_000_000  # larger files are skipped (decompression bombs)
  data.prepare_shard_size = 1024  # examples per ArrayRecord shard
  data.prepare_overwrite = False  # let --mode=prepare replace records in prepared_dir
  data.prepare_processes = 0   # --mode=prepare worker processes (0: one per CPU core)
  data.eval_batch_size = 64
  # Training photos whose mean chroma (the constant-tint baseline, used by
  # colorize/evaluate) is written once to <workdir>/chroma.json; 0: none.
  data.chroma_stats_images = 2000

  # ---------------------------------------------------------------- model
  model = config.model = ml_collections.ConfigDict()
  model.name = 'edge_saliency_gan'  # or 'scgan' (configs/scgan_baseline.py)
  model.use_edge = True        # input = gray (+ Canny edge)
  model.saliency_head = True   # output = RGB (+ saliency)
  model.negative_slope = 0.2   # LeakyReLU
  # Generator encoder widths d1..d7; decoder u1..u6 mirror them, u7 emits
  # the output channels. All kernels 4x4; strides 2 except the layer below.
  model.g_features = (64, 128, 256, 512, 512, 512, 512)
  model.g_kernel_size = 4
  model.g_stride1_layer = 1    # 1-based encoder layer with stride 1 (64 px needs one)
  # ResNet-18 branch: layer4 features resized to fusion_size x fusion_size and
  # concatenated to the output of encoder layer `fusion_layer` (1-based).
  model.use_resnet = True
  model.fusion_layer = 6
  model.fusion_size = 2
  model.resnet_input_size = 224
  model.resnet18_weights = ''  # Flax file from `python -m jaxcolor.models.convert_resnet18`
  model.require_resnet18_weights = True  # the paper uses ImageNet weights
  model.freeze_resnet = True
  # Frozen-ResNet feature cache: `prepare` stores the fusion features
  # (fusion_size^2 x 512, float16) in the records and training reads them
  # instead of running the ResNet. Needs prepared_dir, a frozen branch and no
  # random crop/flip; the records must come from the same ResNet weights.
  model.use_feature_cache = False
  model.feature_cache_dtype = 'float16'  # or 'bfloat16' / 'float32'
  # PatchGAN critic: 6 convs on gray + RGB; 64 px -> 14x14 patch map.
  model.d_features = (64, 128, 256, 512, 512, 1)
  model.d_kernel_sizes = (4, 4, 3, 3, 4, 4)
  model.d_strides = (2, 2, 1, 1, 1, 1)
  model.d_paddings = (1, 1, 1, 1, 1, 1)
  # How G's and D's convolutions are computed: 'fast' (per-layer forms that
  # suit XLA CPU, jaxcolor/models/conv_impl.py), 'phase' (XLA convs, phase
  # transposed convs), 'xla' (XLA's conv and conv_transpose), or 'auto'
  # ('fast' on CPU, 'xla' elsewhere). Same function and parameters each way.
  model.conv_impl = 'auto'

  # ---------------------------------------------------------------- losses
  loss = config.loss = ml_collections.ConfigDict()
  loss.l1_weight = 1.0
  loss.gan_weight = 0.5
  loss.saliency_weight = 0.05
  # WGAN-GP term on the critic, lambda * E[(|grad D(x_hat)| - 1)^2] at random
  # interpolates of real and generated RGB (0 = off, as in the paper).
  loss.gradient_penalty_weight = 0.0

  # ---------------------------------------------------------------- optimisers
  optim = config.optim = ml_collections.ConfigDict()
  optim.g_learning_rate = 1e-4
  optim.d_learning_rate = 1e-5
  optim.b1 = 0.9
  optim.b2 = 0.999

  # ---------------------------------------------------------------- schedule
  config.num_epochs = 100
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.log_every_steps = 50
  config.image_every_steps = 1000
  config.eval_every_steps = 1000
  config.num_eval_batches = -1  # -1: the whole validation split
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3

  # ---------------------------------------------------------------- compute
  # Compute dtype of the networks' activations ('float32' or 'bfloat16');
  # parameters, optimiser state and losses stay float32.
  config.dtype = 'float32'
  config.steps_per_call = 1    # train steps per compiled call (lax.scan)
  config.donate_state = True   # let XLA reuse the state's buffers in place
  # One generator forward per step whose VJP serves the generator update
  # (False: run it again for the update; same result, more work).
  config.reuse_generator_forward = True
  config.parallel = 'pmap'     # or 'shard_map' (jax.jit over a 1-D device mesh)
  # XLA CPU's convolution kernels: 'eigen' (faster for this model) or
  # 'default' (XLA's choice: YNNPACK in jaxlib 0.10). Set by main.py through
  # XLA_FLAGS before JAX starts (jaxcolor/xla_flags.py); CPU only.
  config.xla_cpu_convolutions = 'eigen'
  dist = config.distributed = ml_collections.ConfigDict()
  dist.enabled = False         # jax.distributed.initialize() (multi-host)
  dist.coordinator_address = ''  # empty: taken from the cluster environment
  dist.num_processes = -1
  dist.process_id = -1

  # ---------------------------------------------------------------- benchmark
  bench = config.benchmark = ml_collections.ConfigDict()
  bench.what = 'step'          # or 'e2e', 'input', 'all' (jaxcolor/benchmark.py)
  bench.num_steps = 20         # step/e2e: timed calls of the compiled step
  bench.warmup_steps = 3       # step/e2e: untimed calls after compiling
  bench.num_batches = 20       # input: timed batches
  bench.warmup_batches = 3     # input: untimed batches first
  bench.peak_tflops = 0.0      # peak per device for MFU; 0: table of known chips
  bench.output_json = ''       # default: <workdir>/benchmark_<what>.json
  return config
