"""`GANFamily`: everything the product asks of the paper's model and
SCGAN, and the migration of their old saved configs.
"""

from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from jaxcolor import families
from jaxcolor import losses
from jaxcolor import models as models_lib
from jaxcolor.data import feature_cache
from jaxcolor.families.gan import features
from jaxcolor.families.gan import optim
from jaxcolor.families.gan import state as state_lib
from jaxcolor.families.gan import step as step_lib
from jaxcolor.models import resnet18

# Keys that left the model section's GAN-free configs or moved into it.
_MOVED_TO_MODEL = ('reuse_generator_forward',)
# Switches added after the paper, with their paper values: configs saved
# before them ran exactly these.
_SWITCH_DEFAULTS = {
    'model': {'output': 'rgb'},
    'loss': {'gan': 'paper', 'l1_rebalance': False, 'l1_rebalance_lambda': 0.5},
    'optim': {'g_lr_schedule': 'constant', 'd_lr_schedule': 'constant',
              'warmup_steps': 0, 'decay_steps': 0, 'end_lr_fraction': 0.0,
              'ema_decay': 0.0, 'ema_warmup': True},
}


class GANFamily(families.Family):
  """The proposed model ('edge_saliency_gan') and SCGAN ('scgan')."""
  accumulates_gradients = True
  console_metrics = ('g_loss', 'l1', 'gan', 'saliency', 'd_loss')
  resume_may_differ = ('model.conv_impl', 'optim.adam_impl',
                       'model.resnet18_weights',
                       'model.require_resnet18_weights',
                       'model.reuse_generator_forward')

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    # g_stride1_layer=-1 and fusion_size=0 become the values derived from
    # data.image_size, in the run's own config: what it saves (config.json,
    # checkpoints, bundles) and compares on resume are the values it ran,
    # as in configs saved before these keys could be derived.
    models_lib.resolve_sizes(config.model, config.data.image_size)
    self.models = models_lib.build_models(
        config.model, dtype=families.compute_dtype(config))
    # Inference runs float32 whatever the training dtype.
    self._inference_models = models_lib.build_models(config.model)
    self.l1_grid = step_lib.l1_weight_grid(config.loss)  # None: the plain L1

  @classmethod
  def upgrade_config(cls, saved: dict) -> dict:
    # Saved model.g_stride1_layer and fusion_size are explicit (older runs
    # set them by hand, newer ones save the derived values): kept as they are.
    for key in _MOVED_TO_MODEL:
      if key in saved:
        saved['model'].setdefault(key, saved.pop(key))
    saved['model'].setdefault('reuse_generator_forward', True)
    for section, defaults in _SWITCH_DEFAULTS.items():
      for key, value in defaults.items():
        saved.setdefault(section, {}).setdefault(key, value)
    return saved

  @classmethod
  def benchmark_config(cls, config):
    """Speed depends neither on the ResNet's weights (a random branch) nor
    on the run's length (a decaying schedule of a run given in epochs spans
    the warmup and one more step)."""
    mc, notes = config.model, []
    config = config.copy_and_resolve_references()
    o = config.optim
    if o.g_lr_schedule != 'constant' or o.d_lr_schedule != 'constant':
      if optim.decay_steps(config) <= 0:
        config.num_train_steps = int(o.warmup_steps) + 1
    if mc.use_resnet and mc.require_resnet18_weights and not mc.resnet18_weights:
      config.model.require_resnet18_weights = False
      notes.append('no ResNet-18 weights given: measured with a randomly '
                   'initialised branch (the speed is the same)')
    return config, notes

  def validate(self) -> None:
    super().validate()
    mc, o = self.config.model, self.config.optim
    size = int(self.config.data.image_size)
    table = models_lib.size_table(mc, size)  # raises: a size G/D cannot take
    if table['bottleneck'] > 1:
      logging.warning(
          'At %d px the generator\'s %d encoder layers (config.model.'
          'g_features) stop at a %dx%d bottleneck, not 1x1; each layer added '
          'to g_features halves it (configs/recipe.py:256 has 8 layers)',
          size, len(mc.g_features), table['bottleneck'], table['bottleneck'])
    _check_choice('config.loss.gan', self.config.loss.gan,
                  losses.GAN_OBJECTIVES)
    for key in ('g_lr_schedule', 'd_lr_schedule'):
      _check_choice(f'config.optim.{key}', o[key], optim.LR_SCHEDULES)
    optim.resolve_adam_impl(o.get('adam_impl', 'auto'), self.config.parallel)
    step_lib.rebalance_lambda(self.config.loss)
    if not 0.0 <= float(o.ema_decay) < 1.0:
      raise ValueError(f'config.optim.ema_decay={o.ema_decay}: must be in '
                       '[0, 1) (0: no EMA)')
    if int(o.warmup_steps) < 0 or int(o.decay_steps) < 0:
      raise ValueError('config.optim.warmup_steps and decay_steps must be '
                       f'>= 0; got {o.warmup_steps} and {o.decay_steps}')
    if not 0.0 <= float(o.end_lr_fraction) <= 1.0:
      raise ValueError(f'config.optim.end_lr_fraction={o.end_lr_fraction}: '
                       'must be in [0, 1]')
    decaying = [k for k in ('g_lr_schedule', 'd_lr_schedule')
                if o[k] != 'constant']
    # <= 0: from num_epochs, resolved later
    length = optim.decay_steps(self.config)
    if decaying and 0 < length <= int(o.warmup_steps):
      raise ValueError(
          f'config.optim.{decaying[0]}={o[decaying[0]]!r} decays over '
          'config.optim.decay_steps (0: the run\'s length), which must '
          f'exceed warmup_steps={o.warmup_steps}; got '
          f'{length} (set decay_steps or num_train_steps)')
    if self.config.data.get('use_feature_cache', False):
      if not mc.use_resnet:
        raise ValueError('config.data.use_feature_cache=True needs the '
                         'ResNet branch, but config.model.use_resnet is '
                         'False; set use_feature_cache=False')
      if not mc.freeze_resnet:
        raise ValueError(
            'config.data.use_feature_cache=True needs a frozen ResNet branch '
            '(cached features cannot follow a trained ResNet), but '
            'config.model.freeze_resnet is False; set one of them the other '
            'way')

  # ------------------------------------------------------------ state
  def abstract_init_inputs(self, key):
    resnet = None
    if self.config.model.use_resnet:
      resnet = jax.eval_shape(models_lib.resnet_init, key)
    return key, resnet

  def init_inputs(self, key, data=None):
    """(state init key, ResNet variables or None): reads the weights file."""
    del data
    init_rng, resnet_rng = jax.random.split(key)
    resnet = None
    if self.config.model.use_resnet:
      resnet = models_lib.init_resnet_variables(self.config.model, resnet_rng)
    return init_rng, resnet

  def init(self, rng, resnet):
    return state_lib.create_train_state(rng, resnet, models=self.models,
                                        config=self.config)

  def parameter_trees(self, state):
    trees = {'generator': state.g_params['generator'],
             'critic': state.d_params}
    resnet = state_lib.resnet_variables(state.g_params, state.resnet)
    if resnet is not None:
      frozen = 'trained' if 'resnet' in state.g_params else 'frozen'
      trees[f'ResNet-18 ({frozen})'] = resnet['params']
    return trees

  def check_data(self, state, data) -> None:
    """Cached features must come from this state's ResNet and settings."""
    if data is None or data.feature_entry is None:
      return
    want = self._feature_metadata(None)
    feature_cache.check_entry(
        data.feature_entry,
        {k: want[k] for k in ('shape', 'resnet_input_size')},
        {'shape': 'feature shape (config.model.fusion_size)',
         'resnet_input_size': 'config.model.resnet_input_size'},
        self.config.data.prepared_dir)
    if state is not None:
      self.check_features(data.feature_entry,
                          state_lib.resnet_variables(state.g_params,
                                                     state.resnet))

  def check_features(self, found: dict, variables: Any) -> None:
    """Raises ValueError unless records' `found` entry was made by the
    ResNet `variables`."""
    mc = self.config.model
    now = feature_cache.fingerprint(variables)
    if found.get('fingerprint') != now:
      current = feature_cache.describe({'resnet18_weights':
                                        mc.resnet18_weights,
                                        'seed': self.config.seed})
      raise ValueError(
          f'The ResNet features in {self.config.data.prepared_dir} were '
          'computed with other ResNet weights: the records used '
          f'{feature_cache.describe(found)} (fingerprint '
          f'{str(found.get("fingerprint"))[:12]}), this run uses {current} '
          f'(fingerprint {now[:12]}). Re-run --mode=prepare with this config, '
          'or use the weights above.')

  # ------------------------------------------------------------ steps
  def train_step(self, state, batch):
    return step_lib.train_step(state, batch, models=self.models,
                               config=self.config, l1_grid=self.l1_grid)

  def colorize(self, state, batch):
    return step_lib.colorize_batch(state, batch, models=self.models,
                                   config=self.config)

  def sample_columns(self, outputs):
    """The predicted saliency map, when the generator has its head."""
    return [outputs['fake_saliency']] if 'fake_saliency' in outputs else []

  # ------------------------------------------------------------ inference
  @property
  def inference_keys(self):
    """The state fields inference reads: the EMA generator when kept."""
    g = 'ema_g_params' if optim.ema_enabled(self.config) else 'g_params'
    return (g, 'resnet')

  def inference_params(self, state):
    return {'g_params': state_lib.inference_g_params(state),
            'resnet': state.resnet}

  def from_saved(self, tree):
    """A checkpoint's fields (`inference_keys`) or a bundle's tree ->
    {'g_params', 'resnet'}."""
    g = tree.get('ema_g_params')
    if g is None:
      g = tree['g_params']
    return {'g_params': g, 'resnet': tree.get('resnet')}

  def host_inputs(self, gray):
    inputs = {'gray': gray}
    if self.config.model.use_edge:
      import cv2  # pylint: disable=g-import-not-at-top
      d = self.config.data  # Canny at model size, as in training
      edge = np.zeros_like(gray)
      for g, e in zip(gray, edge):
        e[..., 0] = cv2.Canny(g[..., 0], d.canny_low, d.canny_high)
      inputs['edge'] = edge
    return inputs

  def predict(self, params, inputs):
    return step_lib.predict(params, inputs, models=self._inference_models,
                            model_config=self.config.model)

  # ------------------------------------------------------------ fine-tuning
  @property
  def init_from_keys(self):
    return ('g_params', 'd_params', 'ema_g_params', 'resnet')

  def init_from_source(self, state, source):
    """The generator (with its ResNet branch), the critic when the source
    has one (a checkpoint; a bundle holds none) and, when this run keeps an
    EMA, the source's EMA, else a copy of the generator.

    A bundle's generator is the source's inference weights (its EMA when it
    kept one), so the new state predicts exactly what the bundle does.
    """
    g = source.get('g_params')
    fields = {'g_params': g, 'resnet': source.get('resnet')}
    taken = ['the generator' + (' and its ResNet branch'
                                if fields['resnet'] is not None else '')]
    if source.get('d_params') is not None:
      fields['d_params'] = source['d_params']
      taken.append('the critic')
    if state.ema_g_params is not None:
      ema = source.get('ema_g_params')
      fields['ema_g_params'] = g if ema is None else ema
      taken.append('the EMA' if ema is not None else
                   'the EMA (a copy of the generator)')
    what = ', '.join(taken)
    if 'd_params' not in fields:
      what += '; the critic starts fresh (export bundles hold none)'
    return state.replace(**fields), what

  # ------------------------------------------------------------ prepare
  def feature_shape(self):
    f = self.config.model.fusion_size
    return (f, f, resnet18.FEATURE_CHANNELS)

  def _feature_metadata(self, variables) -> dict:
    mc, data = self.config.model, self.config.data
    meta = {
        'dtype': data.feature_cache_dtype,
        'shape': list(self.feature_shape()),
        'resnet_input_size': mc.resnet_input_size,
        'fusion_size': mc.fusion_size, 'compute_dtype': 'float32',
        'resnet18_weights': mc.resnet18_weights, 'seed': self.config.seed,
    }
    if variables is not None:
      meta['fingerprint'] = feature_cache.fingerprint(variables)
    return meta

  def featurizer(self) -> features.Featurizer:
    """The frozen ResNet of a fresh run of this config, as prepare's
    featurizer (its weights load, or fail, before anything is written)."""
    if not self.config.model.use_resnet:
      raise ValueError('config.data.use_feature_cache=True needs the ResNet '
                       'branch, but config.model.use_resnet is False')
    feature_cache.check_dtype(self.config.data)
    variables = self.init_inputs(families.init_key(self.config.seed))[1]
    mc = self.config.model
    return features.Featurizer(variables, self._feature_metadata(variables),
                      mc.resnet_input_size, mc.fusion_size)

  # ------------------------------------------------------------ report
  @classmethod
  def report_figures(cls, get, config):
    w = config.get('loss', {})
    objective = w['gan']
    saliency_title = 'saliency L1(s·G(x), s·y)'
    if not w.get('saliency_weight', 1):
      saliency_title += ' (off: weight 0)'
    critic_title, gan_title = losses.OBJECTIVE_TITLES[objective]
    if w.get('gradient_penalty_weight'):
      critic_title += f' + {w["gradient_penalty_weight"]:g}·GP'
    total = 'G = ' + ' + '.join(
        f'{w[k]:g}·{label}' if k in w else label
        for k, label in (('l1_weight', 'L1'), ('gan_weight', 'GAN'),
                         ('saliency_weight', 'saliency')))
    return [
        {'file': 'losses.png', 'title': 'generator', 'panels': [
            ({'generator loss': get('train/g_loss')},
             f'generator loss: {total}', 'loss'),
            ({'L1': get('train/l1')}, 'L1(G(x), y)', ''),
            ({'GAN': get('train/gan')}, gan_title, ''),
            ({'saliency L1': get('train/saliency')}, saliency_title, ''),
        ]},
        {'file': 'critic.png', 'title': 'critic', 'panels': [
            ({'critic loss': get('train/d_loss')}, critic_title, 'loss'),
            ({'D(real)': get('train/d_real'), 'D(fake)': get('train/d_fake')},
             'mean critic output σ(D)', 'probability'),
        ]},
    ]


def _check_choice(key: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ValueError(f'{key}={value!r}; expected one of {choices}')
