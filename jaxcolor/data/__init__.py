"""Input data: decoding, preprocessing, sources, Grain pipelines, prepare."""
