"""Property-based fuzzing (hypothesis) of every parser a user's file reaches.

Each input either parses to the right value or raises ``ValueError`` naming the file (and row/field where there is
one): never another exception type, never a hang (hypothesis' per-example deadline), never an output file.

Parsers: Kaggle RLE (:func:`celldata.rle.kaggle_rle_runs`), COCO RLE counts (:func:`celldata.rle.coco_rle_counts`,
:func:`celldata.rle.coco_rle_decode`), ``train.csv`` (:func:`celldata.kaggle_csv.read_train_csv`), submissions
(:func:`ensemble.submission.read_submission`), prediction files (:func:`ensemble.predictions.load_predictions`,
truncated or altered ``.npz``) and ensemble YAML (:func:`ensemble.config.load_config`).

Example counts come from the hypothesis profile: ``fast`` (the default, used by ``make test``: a bounded number
per parser) or ``thorough`` (``make test-slow`` runs this file with ``--hypothesis-profile=thorough``: 10,000
examples per parser). Profiles are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from celldata.kaggle_csv import KAGGLE_COLUMNS, read_train_csv
from celldata.rle import (
    coco_rle_counts,
    coco_rle_decode,
    coco_rle_encode,
    coco_rle_encode_crop,
    kaggle_rle_decode,
    kaggle_rle_encode,
    kaggle_rle_runs,
)

SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _fresh_dir() -> Path:
    """A new empty directory per example (hypothesis reuses function-scoped fixtures across examples)."""
    return Path(tempfile.mkdtemp(prefix="fuzz_"))


def _files_under(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# --------------------------------------------------------------------------------------------------- masks


@st.composite
def masks(draw, max_side: int = 24) -> np.ndarray:
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((h, w)) < density


def _reference_kaggle_decode(tokens: list[int], h: int, w: int) -> np.ndarray:
    flat = np.zeros(h * w, dtype=bool)
    for s, n in zip(tokens[0::2], tokens[1::2]):
        flat[s - 1 : s - 1 + n] = True
    return flat.reshape(h, w)


# --------------------------------------------------------------------------------------------------- Kaggle RLE

_rle_tokens = st.lists(st.integers(-5, 700), max_size=12)
_rle_text = st.one_of(
    _rle_tokens.map(lambda t: " ".join(map(str, t))),
    st.text(alphabet=st.sampled_from("0123456789 -+x\t\n.\u00a0e"), max_size=40),
    st.text(max_size=30),
)


@SETTINGS
@given(rle=_rle_text, h=st.integers(1, 30), w=st.integers(1, 30))
def test_kaggle_rle_parses_right_or_raises_valueerror(rle: str, h: int, w: int) -> None:
    try:
        starts, lengths = kaggle_rle_runs(rle, h, w)
    except ValueError as e:
        event("rejected with ValueError")
        assert str(e)  # a message, never a bare error
        return
    event("accepted")
    tokens = [int(t) for t in rle.split()]
    # accepted: well-formed pairs, sorted, non-overlapping, inside the image
    assert len(tokens) % 2 == 0
    assert np.array_equal(starts + 1, tokens[0::2]) and np.array_equal(lengths, tokens[1::2])
    assert (lengths > 0).all() and (starts >= 0).all() and (starts + lengths <= h * w).all()
    assert (starts[1:] >= starts[:-1] + lengths[:-1]).all()
    assert np.array_equal(kaggle_rle_decode(rle, h, w), _reference_kaggle_decode(tokens, h, w))


@SETTINGS
@given(mask=masks())
def test_kaggle_rle_round_trip(mask: np.ndarray) -> None:
    assert np.array_equal(kaggle_rle_decode(kaggle_rle_encode(mask), *mask.shape), mask)


# --------------------------------------------------------------------------------------------------- COCO RLE

_counts = st.one_of(
    st.lists(st.integers(-3, 400), max_size=10),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=111), max_size=16),
)


@SETTINGS
@given(counts=_counts, h=st.integers(0, 20), w=st.integers(0, 20))
def test_coco_rle_counts_parse_right_or_raise_valueerror(counts, h: int, w: int) -> None:
    rle = {"size": [h, w], "counts": counts}
    try:
        parsed = coco_rle_counts(rle)
        mask = coco_rle_decode(rle)
    except ValueError as e:
        event("rejected with ValueError")
        assert str(e)
        return
    event("accepted")
    assert parsed.sum() == h * w  # accepted counts cover the image exactly
    assert mask.shape == (h, w)
    # the decoded mask encodes back to the same runs (pycocotools drops only a trailing zero count)
    again = coco_rle_counts(coco_rle_encode(mask)) if h * w else np.zeros(0, np.int64)
    trimmed = parsed[:-1] if parsed.size > 1 and parsed[-1] == 0 else parsed
    if h * w:
        assert np.array_equal(np.trim_zeros(again, "b"), np.trim_zeros(trimmed, "b"))


@SETTINGS
@given(mask=masks(), data=st.data())
def test_coco_rle_encode_crop_equals_pycocotools(mask: np.ndarray, data) -> None:
    h, w = mask.shape
    x0 = data.draw(st.integers(0, w))
    x1 = data.draw(st.integers(x0, w))
    y0 = data.draw(st.integers(0, h))
    y1 = data.draw(st.integers(y0, h))
    full = np.zeros_like(mask)
    full[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
    ours = coco_rle_encode_crop(mask[y0:y1, x0:x1], (x0, y0, x1, y1), h, w)
    ref = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
    assert ours == {"size": [h, w], "counts": ref["counts"].decode("ascii")}


# --------------------------------------------------------------------------------------------------- train.csv

H, W = 16, 20


@st.composite
def train_csv_text(draw) -> str:
    """A train.csv that is valid, or valid with a few fields replaced by junk, or junk altogether."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))
    n_images = draw(st.integers(1, 3))
    rows = []
    for i in range(n_images):
        cell_type = draw(st.sampled_from(["shsy5y", "astro", "cort"]))
        for _ in range(draw(st.integers(1, 3))):
            start = draw(st.integers(1, H * W - 1))
            length = draw(st.integers(1, H * W - start + 1))
            rows.append(
                [
                    f"img{i:09d}",
                    f"{start} {length}",
                    str(W),
                    str(H),
                    cell_type,
                    "11h",
                    "2019",
                    f"s{i}",
                    "0 days",
                ]
            )
    junk = st.one_of(
        st.text(max_size=8), st.sampled_from(["", "-1", "0", "1 0", "3 5 7", "x", "hela", "1e3"])
    )
    for _ in range(draw(st.integers(0, 3))):
        r = draw(st.integers(0, len(rows) - 1))
        c = draw(st.integers(0, len(KAGGLE_COLUMNS) - 1))
        rows[r][c] = draw(junk)
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = list(KAGGLE_COLUMNS)
    if draw(st.integers(0, 9)) == 0:
        header.pop(draw(st.integers(0, len(header) - 1)))
    writer.writerow(header)
    writer.writerows(rows)
    text = buf.getvalue()
    if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:  # truncate somewhere
        text = text[: draw(st.integers(0, len(text)))]
    return text


@SETTINGS
@given(text=train_csv_text())
def test_train_csv_reads_right_or_raises_valueerror_naming_the_file(text: str) -> None:
    d = _fresh_dir()
    path = d / "train.csv"
    path.write_text(text, encoding="utf-8")
    try:
        images = read_train_csv(path)
    except ValueError as e:
        event("rejected with ValueError")
        assert str(path) in str(e)
        return
    finally:
        assert _files_under(d) == {"train.csv"}  # the reader writes nothing
    event("accepted")
    # accepted: every row belongs to one image, its RLE decodes inside the image
    reader = list(csv.DictReader(io.StringIO(text)))
    assert sum(len(im.rles) for im in images) == len(reader)
    for im in images:
        for rle in im.rles:
            assert kaggle_rle_decode(rle, im.height, im.width).any()


# --------------------------------------------------------------------------------------------------- submission


@st.composite
def submission_text(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))
    lines = [draw(st.sampled_from(["id,predicted", "id,predicted", "id,annotation", "predicted,id"]))]
    for _ in range(draw(st.integers(0, 4))):
        image_id = draw(st.sampled_from(["a", "b", "c", "", "a,b"]))
        rle = draw(
            st.one_of(
                st.tuples(st.integers(1, H * W), st.integers(1, 40)).map(lambda t: f"{t[0]} {t[1]}"),
                st.sampled_from(["", "1 0", "5 3 7", "x y", "1 5 3 5"]),
            )
        )
        lines.append(f"{image_id},{rle}")
    return "\n".join(lines) + "\n"


@SETTINGS
@given(text=submission_text())
def test_submission_reads_right_or_raises_valueerror_naming_the_file(text: str) -> None:
    from ensemble.submission import read_submission

    d = _fresh_dir()
    path = d / "submission.csv"
    path.write_text(text, encoding="utf-8")
    try:
        subs = read_submission(path, height=H, width=W)
    except ValueError as e:
        event("rejected with ValueError")
        assert str(path) in str(e)
        return
    finally:
        assert _files_under(d) == {"submission.csv"}
    event("accepted")
    # accepted: the header was right, and no image holds two overlapping masks
    assert text.splitlines()[0].strip() == "id,predicted"
    for masks_ in subs.values():
        if len(masks_):
            assert masks_.to_full().sum(0).max() <= 1


# --------------------------------------------------------------------------------------------------- prediction files


@pytest.fixture(scope="module")
def prediction_file_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from celldata.instances import InstanceMasks
    from ensemble.predictions import ImagePredictions, save_predictions

    rng = np.random.default_rng(0)
    preds = []
    for k in range(2):
        full = np.zeros((2, H, W), bool)
        full[0, 2:6, 3:9] = True
        full[1, 8:14, 10:18] = True
        preds.append(
            ImagePredictions(
                image_id=f"img{k}",
                height=H,
                width=W,
                boxes=np.array([[3, 2, 9, 6], [10, 8, 18, 14]], np.float32),
                scores=rng.random(2).astype(np.float32),
                labels=np.array([0, 2]),
                masks=InstanceMasks.from_full(full),
                semantic=rng.random((H, W)).astype(np.float32),
            )
        )
    path = tmp_path_factory.mktemp("pred") / "model.npz"
    save_predictions(path, preds, meta={"model": "fuzz"})
    return path.read_bytes()


@SETTINGS
@given(data=st.data())
def test_altered_prediction_file_loads_or_raises_valueerror(prediction_file_bytes: bytes, data) -> None:
    from ensemble.predictions import load_predictions

    raw = bytearray(prediction_file_bytes)
    how = data.draw(st.sampled_from(["truncate", "flip", "both"]))
    if how in ("truncate", "both"):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    if how in ("flip", "both") and raw:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    d = _fresh_dir()
    path = d / "model.npz"
    path.write_bytes(bytes(raw))
    try:
        preds, _ = load_predictions(path)
    except ValueError as e:
        event("rejected with ValueError")
        assert str(path) in str(e)
        return
    finally:
        assert _files_under(d) == {"model.npz"}
    event("accepted")
    # accepted: a consistent set of predictions
    for p in preds.values():
        n = len(p.scores)
        assert p.boxes.shape == (n, 4) and len(p.labels) == n
        assert np.isfinite(p.boxes).all() and np.isfinite(p.scores).all()
        if p.masks is not None:
            assert len(p.masks) == n


# --------------------------------------------------------------------------------------------------- ensemble YAML

_yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2), st.just(float("nan")), st.text(max_size=6)
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


VALID_ENSEMBLE = {
    "name": "fuzz",
    "models": [
        {"name": "yolox", "predictions": "yolox.npz", "weight": 1.0},
        {"name": "mask_rcnn", "predictions": "mrcnn.npz", "weight": 2.0},
    ],
    "fusion": {"iou_thr": 0.55, "skip_box_thr": 0.05, "conf_type": "avg", "vote_thr": 0.5},
    "class_thresholds": {"shsy5y": {"score": 0.3, "min_area": 40}, "cort": {"score": 0.45, "min_area": 40}},
    "out_dir": "submissions",
}


@st.composite
def ensemble_yaml(draw) -> str:
    """A valid ensemble config with 0-3 values replaced (any key path, any YAML value), or junk text."""
    import copy

    import yaml

    if draw(st.integers(0, 7)) == 0:
        return draw(st.text(max_size=120))
    cfg = copy.deepcopy(VALID_ENSEMBLE)
    for _ in range(draw(st.integers(0, 3))):
        node = cfg
        while True:  # walk down to a random container
            keys = list(range(len(node))) if isinstance(node, list) else list(node)
            if not keys:
                break
            k = draw(st.sampled_from(keys))
            if isinstance(node[k], dict | list) and draw(st.booleans()):
                node = node[k]
                continue
            if isinstance(node, dict) and draw(st.integers(0, 4)) == 0:
                node[draw(st.text(max_size=8))] = draw(_yaml_values)  # an extra (unknown) key
            else:
                node[k] = draw(_yaml_values)
            break
    return yaml.safe_dump(cfg)


@SETTINGS
@given(text=ensemble_yaml())
def test_ensemble_yaml_loads_or_raises_valueerror_naming_the_file(text: str) -> None:
    from ensemble.config import load_config

    d = _fresh_dir()
    path = d / "ensemble.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ValueError as e:
        event("rejected with ValueError")
        assert str(path) in str(e)
        return
    finally:
        assert _files_under(d) == {"ensemble.yaml"}
    event("accepted")
    assert len(cfg.models) >= 1
    assert all(np.isfinite(m.weight) and m.weight >= 0 for m in cfg.models)


def test_profiles_are_registered() -> None:
    """``make test`` runs a bounded profile, ``make test-slow`` one with at least 10,000 examples per parser."""
    assert settings.get_profile("fast").max_examples <= 200
    assert settings.get_profile("thorough").max_examples >= 10_000
