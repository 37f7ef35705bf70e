"""Embeddings and the patterns in them: feature vectors per patch, k-means clusters, maps for a GIS.

A patch's embedding is the target layer's output (the deepest feature map, see ``model.automatic_layer``)
averaged over the pixels that have data: the vector the head decides from. The vectors are clustered with
scikit-learn's k-means (k given, or the k of a range with the best silhouette) and written as Parquet rows with
the patch's centre (x, y in its CRS; lon, lat in WGS 84), its prediction and its cluster; a 2-D PCA plot
coloured by cluster, a grid of example patches per cluster, a GeoPackage of the patches' footprints (pyogrio,
one layer ``patches``) and, on request, TensorBoard projector files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchbearer.explain.patches import Patch


@dataclass
class Clustering:
    """k-means result: ``labels`` per vector, the ``k`` used, silhouette per k tried (empty when k was given)."""

    labels: np.ndarray
    k: int
    silhouettes: dict[int, float]


def embed(model: nn.Module, layer: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """``(vectors B × C, model output)`` for a standardised batch ``x`` and where it has data (B × H × W)."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.inference_mode():
            output = model(x)
    finally:
        handle.remove()
    features = captured[-1].float()
    if features.ndim == 2:  # already pooled (a classifier's pre-logits)
        return features.cpu().numpy(), output
    weights = nn.functional.interpolate(valid[:, None].float().to(features.device), size=features.shape[-2:],
                                        mode="area")  # fmt: skip
    pooled = (features * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-6)
    return pooled.cpu().numpy(), output


def cluster(vectors: np.ndarray, k: int | None, k_range: tuple[int, int], seed: int = 0) -> Clustering:
    """k-means on standardised vectors; with ``k`` None, the k in ``k_range`` (inclusive) with the best
    silhouette (ranges beyond the number of vectors are cut)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    n = len(vectors)
    if n < 2:
        raise ValueError(f"clustering needs at least 2 patches, got {n}")
    scaled = StandardScaler().fit_transform(vectors)
    if k is not None:
        if k > n:
            raise ValueError(f"k = {k} clusters asked for {n} patches")
        return Clustering(KMeans(k, n_init=10, random_state=seed).fit_predict(scaled), k, {})
    low, high = max(2, k_range[0]), min(k_range[1], n - 1)
    if low > high:
        raise ValueError(f"cannot choose k in {k_range[0]}–{k_range[1]} for {n} patches")
    silhouettes: dict[int, float] = {}
    best: tuple[float, int, np.ndarray] | None = None
    for candidate in range(low, high + 1):
        labels = KMeans(candidate, n_init=10, random_state=seed).fit_predict(scaled)
        score = float(silhouette_score(scaled, labels)) if len(set(labels)) > 1 else -1.0
        silhouettes[candidate] = score
        if best is None or score > best[0]:
            best = (score, candidate, labels)
    assert best is not None
    return Clustering(best[2], best[1], silhouettes)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The vectors' first two principal components (N × 2), on standardised features."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaled = StandardScaler().fit_transform(vectors)
    components = min(2, *scaled.shape)
    out = np.zeros((len(vectors), 2))
    out[:, :components] = PCA(components, random_state=0).fit_transform(scaled)
    return out


def lon_lat(patches: list[Patch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres of the patches: x, y in each patch's CRS and lon, lat in WGS 84 (NaN for a patch without a grid)."""
    from rasterio.warp import transform

    xs, ys = np.full(len(patches), np.nan), np.full(len(patches), np.nan)
    lons, lats = np.full(len(patches), np.nan), np.full(len(patches), np.nan)
    for i, patch in enumerate(patches):
        if not patch.georeferenced:
            continue
        xs[i], ys[i] = patch.centre
        (lons[i],), (lats[i],) = transform(patch.crs, "EPSG:4326", [xs[i]], [ys[i]])
    return xs, ys, lons, lats


def write_parquet(path: Path, patches: list[Patch], vectors: np.ndarray, predictions: list[str],
                  clusters: np.ndarray, pcs: np.ndarray) -> Path:  # fmt: skip
    """One row per patch: name, x, y (CRS), crs, lon, lat, prediction, cluster, pc1, pc2, embedding."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    xs, ys, lons, lats = lon_lat(patches)
    table = pa.table({
        "name": [p.name for p in patches], "x": xs, "y": ys, "crs": [str(p.crs) if p.crs else "" for p in patches],
        "lon": lons, "lat": lats, "prediction": predictions, "cluster": clusters.astype(np.int32),
        "pc1": pcs[:, 0], "pc2": pcs[:, 1],
        "embedding": pa.array(list(vectors.astype(np.float32)), type=pa.list_(pa.float32())),
    })  # fmt: skip
    pq.write_table(table, path)
    return Path(path)


def write_footprints(path: Path, patches: list[Patch], predictions: list[str], clusters: np.ndarray) -> Path:
    """A GeoPackage (layer ``patches``) of each patch's footprint polygon in its CRS, with name, prediction and
    cluster. Patches in several CRSs are written in the first one's (reprojected corners)."""
    import pyarrow as pa
    import pyogrio
    import shapely
    from rasterio.warp import transform

    crs = patches[0].crs
    polygons = []
    for patch in patches:
        left, bottom, right, top = patch.bounds
        xs, ys = [left, right, right, left], [bottom, bottom, top, top]
        if patch.crs != crs:
            xs, ys = transform(patch.crs, crs, xs, ys)
        polygons.append(shapely.Polygon(zip(xs, ys, strict=True)))
    table = pa.table({
        "name": [p.name for p in patches], "prediction": predictions, "cluster": clusters.astype(np.int32),
        "geometry": shapely.to_wkb(polygons),
    })  # fmt: skip
    Path(path).unlink(missing_ok=True)
    pyogrio.write_arrow(table, path, layer="patches", driver="GPKG", geometry_name="geometry",
                        geometry_type="Polygon", crs=crs.to_wkt())  # fmt: skip
    return Path(path)


def write_pca_plot(path: Path, pcs: np.ndarray, clusters: np.ndarray, title: str) -> Path:
    """The patches on their first two principal components, coloured by cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchbearer.ml.plots import save_figure

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for c in sorted(set(clusters.tolist())):
        pick = clusters == c
        ax.scatter(pcs[pick, 0], pcs[pick, 1], s=14, label=f"cluster {c} ({int(pick.sum())})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def write_cluster_grid(path: Path, images: list[np.ndarray], clusters: np.ndarray, per_cluster: int = 6) -> Path:
    """A grid of example patches (RGB, H × W × 3 in [0, 1]), one row per cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchbearer.ml.plots import save_figure

    ids = sorted(set(clusters.tolist()))
    fig, axes = plt.subplots(len(ids), per_cluster, figsize=(1.6 * per_cluster, 1.7 * len(ids)), squeeze=False)
    for row, c in zip(axes, ids, strict=True):
        members = np.flatnonzero(clusters == c)[:per_cluster]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(members):
                ax.imshow(images[members[j]])
        row[0].set_title(f"cluster {c}: {int((clusters == c).sum())} patches", fontsize=8, loc="left")
    return save_figure(fig, path)


def write_projector(log_dir: Path, vectors: np.ndarray, patches: list[Patch], predictions: list[str],
                    clusters: np.ndarray, images: list[np.ndarray]) -> Path:  # fmt: skip
    """TensorBoard projector files (``tensorboard --logdir <log_dir>``, Projector tab): the vectors, a
    metadata table (name, prediction, cluster) and a thumbnail per patch."""
    from torch.utils.tensorboard import SummaryWriter

    thumbs = torch.from_numpy(np.stack([thumbnail(i) for i in images])).permute(0, 3, 1, 2).float()
    metadata = [[p.name, pred, str(int(c))] for p, pred, c in zip(patches, predictions, clusters, strict=True)]
    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_embedding(torch.from_numpy(vectors.astype(np.float32)), metadata=metadata, label_img=thumbs,
                             metadata_header=["name", "prediction", "cluster"], tag="embeddings")  # fmt: skip
    finally:
        writer.close()
    return Path(log_dir)


def thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    """An RGB image (H × W × 3) sampled (nearest) to ``size`` × ``size``, float32: what the grid and the
    projector show, kept instead of whole patches so that thousands of scene windows fit in memory."""
    h, w = image.shape[:2]
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return image[rows][:, cols].astype(np.float32)
