"""Native kernels, run by XLA as FFI custom calls (beneath the models).

One library, built from dnnl_conv.cc, winograd.cc and adam.cc by `python -m
jaxcolor.kernels.build` and loaded by library.py:
dnnl_conv: oneDNN's convolutions for CPUs (config.model.conv_impl='dnnl').
winograd: Winograd's method for wide stride-1 3x3 and 4x4 convolutions
  (config.model.conv_impl='winograd').
adam: Adam's update in one pass, in place (config.optim.adam_impl).
"""
