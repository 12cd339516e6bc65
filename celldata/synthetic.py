"""Synthetic Sartorius-format data: phase-contrast-like images with the real cell statistics.

The generator writes exactly the Kaggle competition layout (``train.csv`` with the nine columns, ``train/*.png``
704x520 8-bit grayscale, ``test/*.png``, ``sample_submission.csv``), so everything downstream
(``tools/prepare_sartorius.py``, training, inference, ensembling, scoring) runs unchanged on it.

Cell statistics (measured on 56 real annotated images, 7,339 instances, and the published train.csv counts):

=========  ==================  ==================  ===========  =====================================
cell type  cells per image     area px (median)    aspect       morphology
=========  ==================  ==================  ===========  =====================================
shsy5y     mean ~340 (90-780)  ~180 (mean ~215)    ~1.8         small elongated soma + thin neurites,
                                                                dense and clustered
astro      mean ~80 (28-590)   ~480 (mean ~750)    ~2.4 (-5.7)  large irregular body with processes
cort       mean ~34 (9-94)     ~200 (mean ~235)    ~1.35        small, round, sparse
=========  ==================  ==================  ===========  =====================================

Rendering imitates phase contrast: mid-gray background normalised to mean 128 with an uneven illumination
gradient, a darker textured cell interior with a dark rim, a bright halo just outside each cell border (so
touching cells stay visible), a few unlabeled debris specks, slight horizontal line noise and sensor noise.

Everything is deterministic for a seed: every image draws from its own ``numpy.random.Generator`` seeded with
``(seed, stream, index)``, and PNGs are encoded losslessly by OpenCV, so the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from celldata import CLASSES, IMAGE_HEIGHT, IMAGE_WIDTH
from celldata.fileio import encode_png, replace_dir
from celldata.instances import InstanceMasks
from celldata.kaggle_csv import KAGGLE_COLUMNS
from celldata.rle import coco_rle_decode

_SHIFT = 4  # sub-pixel bits for cv2 polygon drawing
_SCALE = 1 << _SHIFT


@dataclass(frozen=True)
class CellTypeStats:
    """Statistics and appearance of one cell type.

    Attributes:
        count_mean: Mean number of cells per image (before the density factor).
        count_cv: Coefficient of variation of the per-image count (gamma distributed).
        count_min: Smallest per-image count at density 1.
        count_max: Largest per-image count at density 1.
        area_median: Median cell area in pixels (log-normal).
        area_sigma: Log-space standard deviation of the area.
        area_min: Smallest area drawn.
        area_max: Largest area drawn.
        aspect_median: Median major/minor axis ratio of the cell body (log-normal).
        aspect_sigma: Log-space standard deviation of the aspect ratio.
        roughness: Amplitude of the radial boundary noise (0 = smooth ellipse).
        max_overlap: Largest fraction of a new cell's area that may cover earlier cells.
        cluster_frac: Fraction of cells placed around cluster centres instead of uniformly.
        cluster_sigma: Spread of a cluster in pixels.
        body: Range of the interior brightness offset (gray levels).
        rim: Dark rim depth at the inner border (gray levels, subtracted).
        halo: Bright halo height just outside the border (gray levels).
        texture: Amplitude of the interior texture.
    """

    count_mean: float
    count_cv: float
    count_min: int
    count_max: int
    area_median: float
    area_sigma: float
    area_min: float
    area_max: float
    aspect_median: float
    aspect_sigma: float
    roughness: float
    max_overlap: float
    cluster_frac: float
    cluster_sigma: float
    body: tuple[float, float]
    rim: float
    halo: float
    texture: float


CELL_STATS: dict[str, CellTypeStats] = {
    "shsy5y": CellTypeStats(
        count_mean=340.0,
        count_cv=0.45,
        count_min=90,
        count_max=780,
        area_median=165.0,
        area_sigma=0.6,
        area_min=30.0,
        area_max=1500.0,
        aspect_median=1.8,
        aspect_sigma=0.35,
        roughness=0.08,
        max_overlap=0.12,
        cluster_frac=0.6,
        cluster_sigma=35.0,
        body=(-14.0, -4.0),
        rim=16.0,
        halo=22.0,
        texture=8.0,
    ),
    "astro": CellTypeStats(
        count_mean=80.0,
        count_cv=0.7,
        count_min=28,
        count_max=590,
        area_median=480.0,
        area_sigma=0.9,
        area_min=60.0,
        area_max=6000.0,
        aspect_median=2.4,
        aspect_sigma=0.45,
        roughness=0.22,
        max_overlap=0.15,
        cluster_frac=0.3,
        cluster_sigma=60.0,
        body=(-7.0, 3.0),
        rim=9.0,
        halo=14.0,
        texture=5.0,
    ),
    "cort": CellTypeStats(
        count_mean=34.0,
        count_cv=0.5,
        count_min=9,
        count_max=94,
        area_median=170.0,
        area_sigma=0.5,
        area_min=40.0,
        area_max=1200.0,
        aspect_median=1.35,
        aspect_sigma=0.2,
        roughness=0.06,
        max_overlap=0.05,
        cluster_frac=0.2,
        cluster_sigma=25.0,
        body=(-16.0, -2.0),
        rim=20.0,
        halo=28.0,
        texture=6.0,
    ),
}
"""Per-class statistics used by the generator (see the module docstring for where they come from). Target areas
are polygon areas; rasterisation adds the border pixels, so the measured pixel areas come out ~10-20 % larger and
match the real medians."""

_SAMPLE_TAGS: dict[str, tuple[str, ...]] = {
    "shsy5y": ("diff", "undiff"),
    "astro": ("hippo", "cortex"),
    "cort": ("pre-treat", "oka-ddd", "mono"),
}


@dataclass
class SyntheticImage:
    """One rendered image with its instances.

    Attributes:
        image: uint8[H, W] grayscale image.
        instances: The N instance masks (tight crops; overlapping instances are kept as they are).
        cell_type: One of ``celldata.CLASSES``.
    """

    image: np.ndarray
    instances: InstanceMasks
    cell_type: str


# ----------------------------------------------------------------------------------------------- shapes


def _body_polygon(
    rng: np.random.Generator, area: float, aspect: float, roughness: float, n_vertices: int = 48
) -> np.ndarray:
    """Closed body outline centred on the origin with the given polygon area.

    Args:
        rng: Random generator.
        area: Target polygon area in pixels.
        aspect: Major/minor axis ratio (>= 1).
        roughness: Amplitude of the low-frequency radial noise.
        n_vertices: Number of polygon vertices.

    Returns:
        float64[n_vertices, 2] (x, y) vertices.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += rng.normal(0.0, roughness / np.sqrt(k - 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.35, None)
    sa = np.sqrt(aspect)
    x = radius * np.cos(theta) * sa
    y = radius * np.sin(theta) / sa
    phi = rng.uniform(0.0, np.pi)
    c, s = np.cos(phi), np.sin(phi)
    pts = np.stack([c * x - s * y, s * x + c * y], axis=1)
    poly_area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
    return pts * np.sqrt(area / max(poly_area, 1e-9))


def _process(
    rng: np.random.Generator, start: np.ndarray, direction: float, length: float, step: float = 3.0
) -> np.ndarray:
    """A gently curving polyline (neurite / astrocyte process) from ``start``.

    Returns:
        float64[K, 2] (x, y) points, K >= 2.
    """
    n = max(2, int(np.ceil(length / step)) + 1)
    angles = direction + np.cumsum(rng.normal(0.0, 0.18, size=n - 1))
    steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * (length / (n - 1))
    return np.concatenate([start[None], start[None] + np.cumsum(steps, axis=0)], axis=0)


def _draw_cell(rng: np.random.Generator, cell_type: str, area: float) -> np.ndarray:
    """Rasterise one cell of ``cell_type`` with about ``area`` pixels.

    Returns:
        bool[h, w] tight crop of the cell mask (at least 1x1, non-empty).
    """
    st = CELL_STATS[cell_type]
    aspect = float(np.clip(np.exp(rng.normal(np.log(st.aspect_median), st.aspect_sigma)), 1.0, 8.0))
    processes: list[tuple[np.ndarray, int]] = []
    if cell_type == "shsy5y":
        body = _body_polygon(rng, area * 0.85, aspect, st.roughness)
        n_proc = int(rng.choice([0, 1, 1, 2, 2, 3]))
        for _ in range(n_proc):
            v = body[rng.integers(len(body))]
            r = float(np.hypot(*v))
            length = rng.uniform(0.8, 2.5) * r
            processes.append((_process(rng, v * 0.8, float(np.arctan2(v[1], v[0])), length), 2))
    elif cell_type == "astro":
        body = _body_polygon(rng, area * 0.75, aspect, st.roughness)
        n_proc = int(rng.integers(1, 5))
        for _ in range(n_proc):
            v = body[rng.integers(len(body))]
            r = float(np.hypot(*v))
            length = rng.uniform(0.6, 2.0) * r
            processes.append(
                (_process(rng, v * 0.7, float(np.arctan2(v[1], v[0])), length), int(rng.integers(2, 5)))
            )
    else:
        body = _body_polygon(rng, area, aspect, st.roughness)
    pts = [body] + [p for p, _ in processes]
    lo = np.floor(np.min([p.min(axis=0) for p in pts], axis=0)) - 3
    hi = np.ceil(np.max([p.max(axis=0) for p in pts], axis=0)) + 3
    w, h = int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1
    canvas = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round((body - lo) * _SCALE).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    for line, thickness in processes:
        # taper: thicker near the body, thinner at the tip
        half = max(2, len(line) // 2)
        for seg, t in ((line[:half], thickness), (line[half - 1 :], max(1, thickness - 1))):
            cv2.polylines(
                canvas, [np.round((seg - lo) * _SCALE).astype(np.int32)], False, 1, t, cv2.LINE_8, _SHIFT
            )
    ys, xs = np.nonzero(canvas)
    if len(ys) == 0:
        return np.ones((1, 1), dtype=bool)
    return canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(bool)


def sample_cell_count(rng: np.random.Generator, cell_type: str, density: float = 1.0) -> int:
    """Draw the number of cells of one image (gamma distributed, clipped to the real range, times ``density``)."""
    st = CELL_STATS[cell_type]
    shape = 1.0 / st.count_cv**2
    n = rng.gamma(shape, st.count_mean / shape)
    n = float(np.clip(n, st.count_min, st.count_max)) * density
    return max(1, int(round(n)))


def sample_cell_area(rng: np.random.Generator, cell_type: str) -> float:
    """Draw a target cell area in pixels (log-normal, clipped)."""
    st = CELL_STATS[cell_type]
    return float(np.clip(np.exp(rng.normal(np.log(st.area_median), st.area_sigma)), st.area_min, st.area_max))


def place_cells(
    rng: np.random.Generator,
    cell_type: str,
    n_cells: int,
    height: int = IMAGE_HEIGHT,
    width: int = IMAGE_WIDTH,
    max_tries: int = 12,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw and place ``n_cells`` cells, allowing limited overlap with earlier cells.

    Cells are clipped at the image border. A candidate whose overlap with earlier cells exceeds the type's
    ``max_overlap`` fraction is redrawn at another position (``max_tries`` times, then dropped), so images hold
    touching and a few overlapping cells, like the real annotations.

    Returns:
        ``(boxes, crops)``: int32[N, 4] (x0, y0, x1, y1, exclusive) and N bool crops; N <= n_cells.
    """
    st = CELL_STATS[cell_type]
    occupied = np.zeros((height, width), dtype=bool)
    n_clusters = max(1, int(round(n_cells / 25)))
    centres = np.stack([rng.uniform(0, width, n_clusters), rng.uniform(0, height, n_clusters)], axis=1)
    boxes: list[tuple[int, int, int, int]] = []
    crops: list[np.ndarray] = []
    for _ in range(n_cells):
        cell = _draw_cell(rng, cell_type, sample_cell_area(rng, cell_type))
        ch, cw = cell.shape
        for _try in range(max_tries):
            if rng.random() < st.cluster_frac:
                c = centres[rng.integers(n_clusters)]
                cx, cy = rng.normal(c[0], st.cluster_sigma), rng.normal(c[1], st.cluster_sigma)
            else:
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            x0, y0 = int(round(cx - cw / 2)), int(round(cy - ch / 2))
            ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + cw, width), min(y0 + ch, height)
            if ix1 - ix0 < 2 or iy1 - iy0 < 2:
                continue
            crop = cell[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            area = int(crop.sum())
            if area < 0.5 * cell.sum():  # mostly outside the image
                continue
            overlap = int(np.count_nonzero(crop & occupied[iy0:iy1, ix0:ix1]))
            if overlap > st.max_overlap * area:
                continue
            ys, xs = np.nonzero(crop)
            crop = crop[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            bx0, by0 = ix0 + int(xs.min()), iy0 + int(ys.min())
            box = (bx0, by0, bx0 + crop.shape[1], by0 + crop.shape[0])
            occupied[box[1] : box[3], box[0] : box[2]] |= crop
            boxes.append(box)
            crops.append(crop)
            break
    return np.asarray(boxes, dtype=np.int32).reshape(-1, 4), crops


# --------------------------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation (float32[shape])."""
    n = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return n / max(float(n.std()), 1e-6)


def render_phase_contrast(rng: np.random.Generator, instances: InstanceMasks, cell_type: str) -> np.ndarray:
    """Render instance masks as a phase-contrast-like grayscale image.

    Args:
        rng: Random generator (all randomness of the rendering comes from it).
        instances: The N instance masks of an (H, W) image.
        cell_type: Cell type whose appearance to use (one of ``celldata.CLASSES``).

    Returns:
        uint8[H, W] image with mean about 128.
    """
    st = CELL_STATS[cell_type]
    height, width = instances.height, instances.width
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(ang) * (xx / width - 0.5) + np.sin(ang) * (yy / height - 0.5)) * rng.uniform(4.0, 14.0)
    illum = grad + 4.0 * _smooth_noise(rng, (height, width), 60.0)

    body = np.zeros((height, width), np.float32)
    fg = np.zeros((height, width), bool)
    rim = np.zeros((height, width), np.float32)
    halo = np.zeros((height, width), np.float32)
    k3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    k5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    pad = 3
    for (x0, y0, x1, y1), crop in zip(instances.boxes.tolist(), instances.crops):
        px0, py0, px1, py1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, width), min(y1 + pad, height)
        m = np.zeros((py1 - py0, px1 - px0), np.uint8)
        m[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0] = crop
        inner = m.astype(bool) & ~cv2.erode(m, k3, borderType=cv2.BORDER_REPLICATE).astype(bool)
        outer = cv2.dilate(m, k5).astype(bool) & ~m.astype(bool)
        sl = (slice(py0, py1), slice(px0, px1))
        mb = m.astype(bool)
        body[sl][mb] = rng.uniform(*st.body)
        fg[sl] |= mb
        rim[sl][inner] = 1.0
        halo[sl][outer] = np.maximum(halo[sl][outer], rng.uniform(0.6, 1.0))
    halo[fg & (rim == 0)] *= 0.5  # a neighbour's halo shows weaker over a cell's interior
    halo = cv2.GaussianBlur(halo, (0, 0), 0.9)
    rim = cv2.GaussianBlur(rim, (0, 0), 0.6)
    texture = _smooth_noise(rng, (height, width), 1.2) * st.texture

    img = 128.0 + illum + np.where(fg, body + texture, 0.0) - st.rim * rim + st.halo * halo
    # unlabeled debris specks
    for _ in range(int(rng.integers(5, 25))):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(1, 4))
        cv2.circle(img, (cx, cy), r + 1, float(128 + rng.uniform(10, 25)), -1)
        cv2.circle(img, (cx, cy), r, float(128 - rng.uniform(15, 40)), -1)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.6)
    img += rng.normal(0.0, 0.6, size=(height, 1)).astype(np.float32)  # faint horizontal line noise
    img += rng.normal(0.0, rng.uniform(2.5, 4.5), size=(height, width)).astype(np.float32)
    img += 128.0 - float(img.mean())
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def synthesize_image(
    rng: np.random.Generator,
    cell_type: str,
    density: float = 1.0,
    height: int = IMAGE_HEIGHT,
    width: int = IMAGE_WIDTH,
) -> SyntheticImage:
    """Draw cells of one type, place them and render the image.

    Args:
        rng: Random generator.
        cell_type: One of ``celldata.CLASSES``.
        density: Factor on the per-image cell count (1.0 = real statistics; e.g. 0.3 for a CPU demo).
        height: Image height.
        width: Image width.

    Returns:
        The rendered image and its instances.
    """
    if cell_type not in CELL_STATS:
        raise ValueError(f"unknown cell type {cell_type!r}; expected one of {CLASSES}")
    if not density > 0:
        raise ValueError(f"density must be > 0, got {density}")
    n = sample_cell_count(rng, cell_type, density)
    boxes, crops = place_cells(rng, cell_type, n, height, width)
    instances = InstanceMasks(height, width, boxes, crops)
    return SyntheticImage(render_phase_contrast(rng, instances, cell_type), instances, cell_type)


# ------------------------------------------------------------------------------------------ Kaggle layout


def _new_id(rng: np.random.Generator, used: set[str]) -> str:
    """A fresh 12-hex-digit image id like the competition's."""
    while True:
        image_id = rng.bytes(6).hex()
        if image_id not in used:
            used.add(image_id)
            return image_id


def _sample_metadata(rng: np.random.Generator, cell_type: str, n_images: int) -> list[dict[str, str]]:
    """Metadata columns for the ``n_images`` images of one sample (one well/vessel imaged over time).

    Returns:
        One dict per image with ``plate_time``, ``sample_date``, ``sample_id``, ``elapsed_timedelta``.
    """
    tag = _SAMPLE_TAGS[cell_type][int(rng.integers(len(_SAMPLE_TAGS[cell_type])))]
    well = f"{'ABCDEFGH'[int(rng.integers(8))]}{int(rng.integers(1, 13))}-{int(rng.integers(1, 5))}"
    sample_id = (
        f"{cell_type}[{tag}]_{well}_Vessel-{int(rng.integers(100, 1000))}_Ph_{int(rng.integers(1, 5))}"
    )
    day = np.datetime64("2019-06-01") + np.timedelta64(int(rng.integers(0, 600)), "D")
    first = int(rng.integers(1, 24))
    rows = []
    for k in range(n_images):
        hours = first + 12 * k + int(rng.integers(0, 3))
        minutes = int(rng.choice([0, 30]))
        rows.append(
            {
                "plate_time": f"{hours % 24:02d}h{minutes:02d}m00s",
                "sample_date": str(day),
                "sample_id": sample_id,
                "elapsed_timedelta": f"{hours // 24} days {hours % 24:02d}:{minutes:02d}:00",
            }
        )
    return rows


def _instance_rows(
    image_id: str, sim: SyntheticImage, meta: dict[str, str], height: int, width: int
) -> list[list[str]]:
    """``train.csv`` rows (nine columns, Kaggle RLE) of one image's instances."""
    rows = []
    for rle in sim.instances.to_kaggle_rles():
        if not rle:
            continue
        rows.append(
            [
                image_id,
                rle,
                str(width),
                str(height),
                sim.cell_type,
                meta["plate_time"],
                meta["sample_date"],
                meta["sample_id"],
                meta["elapsed_timedelta"],
            ]
        )
    return rows


def _load_coco_instances(path: Path, max_images: int | None = None) -> list[tuple[str, str, InstanceMasks]]:
    """Read a COCO instance json into per-image instance masks (the first ``max_images`` images by id).

    Returns:
        One ``(image_id, cell_type, instances)`` tuple per image, sorted by the string image id.

    Raises:
        ValueError: unreadable json, missing fields, an unknown category or an undecodable segmentation; the
            message names the file and the image/annotation.
    """
    try:
        data = json.loads(path.read_text())
        images, anns, cats = data["images"], data["annotations"], data["categories"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a readable COCO instance json ({e})") from e
    cat_name = {c["id"]: str(c["name"]).lower() for c in cats}
    by_image: dict[object, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for img in sorted(images, key=lambda r: str(r["id"]))[:max_images]:
        h, w = int(img["height"]), int(img["width"])
        boxes, crops, types = [], [], []
        for a in by_image.get(img["id"], []):
            name = cat_name.get(a["category_id"])
            if name not in CLASSES:
                raise ValueError(
                    f"{path}: annotation {a.get('id')} of image {img['id']} has category {a['category_id']} "
                    f"({name!r}), expected one of {CLASSES}"
                )
            seg = a["segmentation"]
            try:
                if isinstance(seg, list):
                    m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
                else:
                    m = coco_rle_decode(seg)
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(
                    f"{path}: annotation {a.get('id')} of image {img['id']}: bad segmentation ({e})"
                ) from e
            if m.shape != (h, w):
                raise ValueError(
                    f"{path}: annotation {a.get('id')} of image {img['id']}: mask size {m.shape} != ({h}, {w})"
                )
            ys, xs = np.nonzero(m)
            if len(ys) == 0:
                continue
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            boxes.append((x0, y0, x1, y1))
            crops.append(m[y0:y1, x0:x1].copy())
            types.append(name)
        cell_type = img.get("cell_type") or (max(set(types), key=types.count) if types else None)
        if cell_type not in CLASSES:
            raise ValueError(f"{path}: image {img['id']} has no annotation and no known 'cell_type'")
        out.append(
            (
                str(img["id"]),
                cell_type,
                InstanceMasks(h, w, np.asarray(boxes, np.int32).reshape(-1, 4), crops),
            )
        )
    return out


def _commit_staging(staging: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Move ``names`` from ``staging`` into ``out_dir``, replacing old entries of the same name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = staging / name, out_dir / name
        if src.is_dir():
            replace_dir(src, dst)
        else:
            os.replace(src, dst)


_PlanItem = tuple[str, str, dict[str, str], object]
"""One training image of the plan: ``(image_id, cell_type, metadata, source record or None)``."""


def _plan_from_coco(
    from_coco: str | os.PathLike,
    n_images: int | None,
    meta_rng: np.random.Generator,
    used: set[str],
    lo: int,
    hi: int,
) -> list[_PlanItem]:
    """The training images rendered from a COCO json's masks, grouped into samples of ``lo..hi`` images per type."""
    coco_images = _load_coco_instances(Path(from_coco), n_images)
    if not coco_images:
        raise ValueError(f"{from_coco}: no images")
    by_type: dict[str, list] = {}
    for rec in coco_images:
        by_type.setdefault(rec[1], []).append(rec)
    plan: list[_PlanItem] = []
    for cell_type in CLASSES:
        recs = by_type.get(cell_type, [])
        i = 0
        while i < len(recs):
            k = int(meta_rng.integers(lo, hi + 1))
            group = recs[i : i + k]
            for rec, meta in zip(group, _sample_metadata(meta_rng, cell_type, len(group))):
                image_id = rec[0] if rec[0] not in used else _new_id(meta_rng, used)
                used.add(image_id)
                plan.append((image_id, cell_type, meta, rec))
            i += k
    return plan


def _plan_synthetic(
    n_images: int, meta_rng: np.random.Generator, used: set[str], lo: int, hi: int
) -> list[_PlanItem]:
    """``n_images`` synthetic training images, samples of the cell types in turn."""
    plan: list[_PlanItem] = []
    offset = int(meta_rng.integers(len(CLASSES)))
    s = 0
    while len(plan) < n_images:
        cell_type = CLASSES[(offset + s) % len(CLASSES)]
        # small datasets: fewer images per sample so that every cell type gets >= 2 samples (grouped folds)
        cap = max(1, n_images // (2 * len(CLASSES)))
        k = min(int(meta_rng.integers(lo, hi + 1)), cap, n_images - len(plan))
        for meta in _sample_metadata(meta_rng, cell_type, k):
            plan.append((_new_id(meta_rng, used), cell_type, meta, None))
        s += 1
    return plan


def _stage_train(
    plan: Sequence[_PlanItem], seed: int, density: float, staging: Path, bar: tqdm
) -> tuple[str, int, dict[str, dict[str, int]]]:
    """Renders the training images into ``staging/train``.

    Returns:
        ``(train.csv text, number of instances, per cell type {'images', 'instances'})``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(KAGGLE_COLUMNS)
    per_class = {c: {"images": 0, "instances": 0} for c in CLASSES}
    n_instances = 0
    for idx, (image_id, cell_type, meta, rec) in enumerate(plan):
        rng = np.random.default_rng([seed, 0, idx])
        if rec is None:
            sim = synthesize_image(rng, cell_type, density)
            h, w = IMAGE_HEIGHT, IMAGE_WIDTH
        else:
            instances = rec[2]
            h, w = instances.height, instances.width
            sim = SyntheticImage(render_phase_contrast(rng, instances, cell_type), instances, cell_type)
        rows = _instance_rows(image_id, sim, meta, h, w)
        writer.writerows(rows)
        n_instances += len(rows)
        per_class[cell_type]["images"] += 1
        per_class[cell_type]["instances"] += len(rows)
        (staging / "train" / f"{image_id}.png").write_bytes(encode_png(sim.image))
        bar.update()
    return buf.getvalue(), n_instances, per_class


def _stage_test(
    test_ids: Sequence[str], test_types: Sequence[str], seed: int, density: float, staging: Path, bar: tqdm
) -> None:
    """Renders the unlabeled test images into ``staging/test`` and writes ``sample_submission.csv``."""
    for i, (image_id, cell_type) in enumerate(zip(test_ids, test_types)):
        sim = synthesize_image(np.random.default_rng([seed, 2, i]), cell_type, density)
        (staging / "test" / f"{image_id}.png").write_bytes(encode_png(sim.image))
        bar.update()
    sub = io.StringIO()
    sub_writer = csv.writer(sub, lineterminator="\n")
    sub_writer.writerow(["id", "predicted"])
    sub_writer.writerows([[t, "1 1"] for t in test_ids])
    (staging / "sample_submission.csv").write_text(sub.getvalue())


def generate_synthetic_dataset(
    out_dir: str | os.PathLike,
    n_images: int | None = 24,
    n_test: int = 3,
    seed: int = 0,
    density: float = 1.0,
    from_coco: str | os.PathLike | None = None,
    images_per_sample: tuple[int, int] = (2, 4),
    show_progress: bool = True,
) -> dict:
    """Write a synthetic dataset in the Kaggle competition layout.

    Writes ``out_dir/train.csv`` (columns :data:`KAGGLE_COLUMNS`, one row per cell, Kaggle RLE),
    ``out_dir/train/<id>.png``, ``out_dir/test/<id>.png`` and ``out_dir/sample_submission.csv`` (``id,predicted``).
    Everything is built in a staging directory beside ``out_dir`` and moved in at the end, so a failure leaves
    ``out_dir`` as it was. Existing ``train/``, ``test/``, ``train.csv`` and ``sample_submission.csv`` are
    replaced; other content of ``out_dir`` (e.g. an older ``annotations/``) is left alone.

    Args:
        out_dir: Output directory.
        n_images: Number of training images (with ``from_coco``: the first ``n_images`` images of the json by
            id, ``None`` = all).
        n_test: Number of unlabeled test images.
        seed: Random seed; the same seed gives byte-identical files.
        density: Factor on the per-image cell counts (1.0 = real statistics), ignored for ``from_coco`` images.
        from_coco: Optional COCO instance json; its instance masks (polygons or RLE) give the geometry and its
            categories (``shsy5y``/``astro``/``cort``) the cell type, and the images are rendered from them.
        images_per_sample: Inclusive range of images drawn per ``sample_id`` (capped at
            ``n_images // 6`` so that small datasets still hold two or more samples of every cell type).
        show_progress: Show a tqdm progress bar.

    Returns:
        Summary dict: ``n_train``, ``n_test``, ``n_instances``, ``per_class`` (images and instances per cell type),
        ``out_dir``.

    Raises:
        ValueError: invalid arguments or an unusable ``from_coco`` file.
    """
    out_dir = Path(out_dir)
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    if not density > 0:
        raise ValueError(f"density must be > 0, got {density}")
    lo, hi = images_per_sample
    if not 1 <= lo <= hi:
        raise ValueError(f"images_per_sample must be an increasing range >= 1, got {images_per_sample}")

    meta_rng = np.random.default_rng([seed, 3])
    used: set[str] = set()
    if from_coco is not None:
        plan = _plan_from_coco(from_coco, n_images, meta_rng, used, lo, hi)
    else:
        assert n_images is not None
        plan = _plan_synthetic(n_images, meta_rng, used, lo, hi)
    test_types = [CLASSES[(i + int(meta_rng.integers(len(CLASSES)))) % len(CLASSES)] for i in range(n_test)]
    test_ids = [_new_id(meta_rng, used) for _ in range(n_test)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging.", dir=out_dir.parent))
    try:
        (staging / "train").mkdir()
        (staging / "test").mkdir()
        bar = tqdm(total=len(plan) + n_test, desc="synthetic images", unit="img", disable=not show_progress)
        train_csv, n_instances, per_class = _stage_train(plan, seed, density, staging, bar)
        _stage_test(test_ids, test_types, seed, density, staging, bar)
        bar.close()
        (staging / "train.csv").write_text(train_csv)
        _commit_staging(staging, out_dir, ["train", "test", "sample_submission.csv", "train.csv"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "out_dir": str(out_dir),
        "n_train": len(plan),
        "n_test": n_test,
        "n_instances": n_instances,
        "per_class": per_class,
    }
