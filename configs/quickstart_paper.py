"""The paper's exact model on the bundled sample photos, sized for a CPU.

The quick start's photos and a 160-step schedule (`bundled_photos`) with
every setting of configs/default.py (its time on 2 CPU cores is in the
README's quick start), leaving a checkpoint, TensorBoard logs and a PNG
grid. No ImageNet weights can be downloaded, so the ResNet-18 branch runs
with random weights (a WARNING says so); point
`--config.model.resnet18_weights` at a converted file to use real ones.
configs/quickstart.py trains the recommended recipe, at a quarter of
these widths without the ResNet branch, for 1800 steps.
"""

import os

from configs import default

SAMPLES_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'jaxcolor', 'data', 'samples')


def bundled_photos(config):
  """Sets `config` to train 160 steps of batch 8 on the bundled photos."""
  config.data.train_dir = SAMPLES_DIR
  config.data.val_fraction = 0.15
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.data.num_workers = 1
  config.model.require_resnet18_weights = False
  config.num_train_steps = 160
  config.log_every_steps = 10
  config.image_every_steps = 40
  config.eval_every_steps = 40
  config.checkpoint_every_steps = 40
  return config


def get_config():
  return bundled_photos(default.get_config())
