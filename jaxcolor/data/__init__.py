"""Input data: sources, decoding and preprocessing, Grain pipelines, the
feature cache's record schema, and the bundled sample photos.

Imports nothing from jaxcolor's models, families or training loop: the data
sits at the bottom of the module map.
"""
