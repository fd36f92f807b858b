"""What every mode stands on: devices, checkpoints, saved configs, config
checks, the workdir lock, XLA flags and the console. Imports nothing else
of jaxcolor."""
