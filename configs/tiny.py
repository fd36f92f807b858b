"""A tiny model for tests: the paper's quick start (data, code paths), narrow layers."""

from configs import quickstart_paper


def get_config():
  config = quickstart_paper.get_config()
  config.data.num_workers = 0
  config.model.g_features = (8, 8, 16, 16, 16, 16, 16)
  config.model.d_features = (8, 8, 16, 16, 16, 1)
  config.model.resnet_input_size = 32
  # XLA's own convs compile in half the time at these widths; the other
  # forms are pinned equal to them by tests/test_conv_impl.py.
  config.model.conv_impl = 'xla'
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.image_every_steps = 2
  config.eval_every_steps = 2
  config.num_eval_batches = 1
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 2
  return config
