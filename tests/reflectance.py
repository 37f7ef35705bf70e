"""Reading a stack as reflectance the way training and prediction do: DN × scale + shift with the stack's own
``StackInfo.reflectance_terms``, DN 0 in any band no data (``imagery.cache.valid_pixels``). A test reference."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.windows import Window

from torchbearer.imagery.cache import StackInfo, valid_pixels


def read_reflectance(info: StackInfo, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reflectance float32 bands × rows × columns, valid rows × columns) of ``window`` (whole stack: None);
    no-data pixels read 0."""
    with rasterio.open(info.path) as ds:
        dn = ds.read(window=window)
    scale, shift = info.reflectance_terms
    valid = valid_pixels(dn)
    reflectance = dn.astype(np.float32) * np.float32(scale) + np.float32(shift)
    return reflectance * valid[None], valid
