"""A tiny model for tests: same code paths as the paper's, narrow layers."""

import os

from configs import default

SAMPLES_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'jaxcolor', 'data', 'samples')


def get_config():
  config = default.get_config()
  config.data.train_dir = SAMPLES_DIR
  config.data.val_fraction = 0.15
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.data.num_workers = 0
  config.model.g_features = (8, 8, 16, 16, 16, 16, 16)
  config.model.d_features = (8, 8, 16, 16, 16, 1)
  config.model.resnet_input_size = 32
  config.model.require_resnet18_weights = False
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.image_every_steps = 2
  config.eval_every_steps = 2
  config.num_eval_batches = 1
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 2
  return config
