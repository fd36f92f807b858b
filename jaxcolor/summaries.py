"""Sample grids like the paper's Figure 2: gray | generated | real | saliency."""

import cv2
import numpy as np

from jaxcolor.runtime import files


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] float -> uint8 [0, 255]."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5),
                 0, 255).astype(np.uint8)


def sample_grid(columns: list[np.ndarray], max_rows: int = 8) -> np.ndarray:
  """Tiles images side by side, one example per row.

  Args:
    columns: arrays (B, H, W, C) in [-1, 1], C in {1, 3}; one column each.
    max_rows: at most this many examples.
  Returns:
    uint8 (rows*H, len(columns)*W, 3) RGB image with 2-px white separators.
  """
  rows = min(max_rows, columns[0].shape[0])
  pad = 2
  tiles = []
  for r in range(rows):
    row = []
    for col in columns:
      img = to_uint8(col[r])
      if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
      row.append(np.pad(img, ((pad, pad), (pad, pad), (0, 0)),
                        constant_values=255))
    tiles.append(np.concatenate(row, axis=1))
  return np.concatenate(tiles, axis=0)


def write_png(path: str, rgb: np.ndarray) -> None:
  """RGB uint8 (H, W, 3) -> a PNG file, written whole or not at all."""
  ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  if not ok:
    raise ValueError(f'cannot encode a {rgb.shape} {rgb.dtype} image as PNG '
                     f'for {path}')
  files.write_bytes(path, buf.tobytes())
