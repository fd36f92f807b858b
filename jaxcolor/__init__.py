"""jaxcolor: edge- and saliency-guided GAN colorization in JAX/Flax."""

__version__ = "0.1.0"
