"""Native kernels, run by XLA as FFI custom calls (beneath the models).

dnnl_conv: oneDNN's convolutions for CPUs (config.model.conv_impl='dnnl'),
built from dnnl_conv.cc by `python -m jaxcolor.kernels.build`.
"""
