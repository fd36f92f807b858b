"""One home for colour: the YCrCb space where a model's chroma meets a
photo's luminance (ycrcb, recombine, mean_chroma), CIE Lab (cielab) and
Zhang et al.'s 313 ab bins (ab_bins)."""
