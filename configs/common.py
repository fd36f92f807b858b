"""What every model's config shares: data, schedule, compute, benchmark.

Model configs (configs/default.py for the paper's GAN, cic_baseline.py for
Zhang et al.) start from `get_config()` here and add their own `model`,
`loss` and `optim` sections; nothing here belongs to one model.
"""

import ml_collections


SIZES = (64, 128, 256)  # the sizes a config file's variant may name


def size_variant(arg, config_file: str) -> int:
  """The text after ':' in `--config=configs/x.py:256` -> the image side.

  None or '' (no variant) is 64, the paper's size.

  Raises:
    ValueError: one line naming the variants that exist.
  """
  if arg in (None, ''):
    return 64
  if str(arg).strip() not in {str(s) for s in SIZES}:
    raise ValueError(f'--config={config_file}:{arg}: the variants are the '
                     'image sizes ' + ', '.join(f'{config_file}:{s}'
                                                 for s in SIZES))
  return int(arg)


def get_config() -> ml_collections.ConfigDict:
  """The shared sections, with the paper's data and schedule settings."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Fine-tuning: an export bundle, a training workdir (its newest intact
  # checkpoint) or one of its checkpoints/<step> folders. A new run starts
  # at step 0 from that model's weights (fresh optimisers and schedules);
  # a workdir that holds checkpoints resumes from them and ignores this.
  # '': train from scratch.
  config.init_from = ''

  # ---------------------------------------------------------------- data
  data = config.data = ml_collections.ConfigDict()
  data.train_dir = ''          # image folder (recursive); Flickr30k/ImageNet as-is
  data.val_dir = ''            # optional; else a hash split of train_dir
  data.val_fraction = 0.05     # share of train_dir held out when val_dir is empty
  data.prepared_dir = ''       # ArrayRecord shards written by --mode=prepare
  # Training resolution (square); the model files' variants
  # (`--config=configs/recipe.py:256`) set it with the keys that follow it.
  data.image_size = 64
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
  data.max_file_bytes = 512 * 2**20  # larger photo files are skipped unread
  data.prepare_shard_size = 1024  # examples per ArrayRecord shard
  data.prepare_overwrite = False  # let --mode=prepare replace records in prepared_dir
  data.prepare_processes = 0   # --mode=prepare worker processes (0: one per CPU core)
  data.eval_batch_size = 64
  # Feature cache: `prepare` stores model outputs that never change during
  # training (the GAN's frozen ResNet-18 fusion features, fusion_size^2 x
  # 512) in the records, and training reads them instead of recomputing
  # them. Needs prepared_dir and no random crop/flip; the records must come
  # from the same weights (checked).
  data.use_feature_cache = False
  data.feature_cache_dtype = 'float16'  # or 'bfloat16' / 'float32'

  # Training photos whose mean chroma (the constant-tint baseline, used by
  # colorize/evaluate) is written once to <workdir>/chroma.json; 0: none.
  data.chroma_stats_images = 2000

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
  # Micro-batches per optimiser update: each device's batch is split into
  # this many, their gradients averaged (a large batch in less memory).
  config.grad_accum_steps = 1
  config.donate_state = True   # let XLA reuse the state's buffers in place
  config.parallel = 'pmap'     # or 'shard_map' (jax.jit over a 1-D device mesh)
  # XLA CPU's kernels: 'auto' (by the CPU's instruction set and
  # config.dtype, from the CPU kinds measured: 'eigen' on all so far),
  # 'eigen' (Eigen convolutions, faster for this model than YNNPACK's),
  # 'onednn' ('eigen' with the matmuls on oneDNN) or 'default' (XLA's
  # choice: YNNPACK in jaxlib 0.10). Set by main.py through
  # XLA_FLAGS before JAX starts (jaxcolor/runtime/xla_flags.py); CPU only.
  config.xla_cpu_convolutions = 'auto'
  # A jax.profiler trace of train steps (start, count), e.g. (10, 3): steps
  # 10..12 (whole calls with steps_per_call > 1), into <workdir>/profile/.
  # --mode=benchmark traces its timed calls start..start+count-1 instead.
  # (): off.
  config.profile_steps = ()
  # JAX's persistent compilation cache: a second start of the same model
  # loads its compiled programs instead of compiling them again. Set by
  # main.py (jaxcolor/runtime/compile_cache.py) for every mode; this default
  # is $XDG_CACHE_HOME/jaxcolor/xla when XDG_CACHE_HOME is set, and the
  # JAX_COMPILATION_CACHE_DIR env var wins over any value. '': off.
  config.compilation_cache_dir = '~/.cache/jaxcolor/xla'
  dist = config.distributed = ml_collections.ConfigDict()
  dist.enabled = False         # jax.distributed.initialize() (multi-host)
  dist.coordinator_address = ''  # empty: taken from the cluster environment
  dist.num_processes = -1
  dist.process_id = -1

  # ---------------------------------------------------------------- benchmark
  bench = config.benchmark = ml_collections.ConfigDict()
  bench.what = 'step'          # or 'e2e', 'input', 'all' (jaxcolor/modes/benchmark.py)
  bench.num_steps = 20         # step/e2e: timed calls of the compiled step
  bench.warmup_steps = 3       # step/e2e: untimed calls after compiling
  bench.num_batches = 20       # input: timed batches
  bench.warmup_batches = 3     # input: untimed batches first
  bench.peak_tflops = 0.0      # peak per device for MFU; 0: table of known chips
  # step: GiB budgets to fit by XLA's memory estimate, e.g. (16, 40, 80):
  # the step is also compiled (not run) at memory_fit_batch and twice that
  # many images per device. (): not measured.
  bench.memory_budgets_gib = ()
  bench.memory_fit_batch = 128
  bench.output_json = ''       # default: <workdir>/benchmark_<what>.json
  return config
