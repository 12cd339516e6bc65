"""The ensemble's ``image_class: classifier`` rule (issue 12) on hand cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from celldata import CLASSES
from celldata.instances import InstanceMasks
from ensemble.masks import FusionParams, fuse_image
from ensemble.predictions import ImagePredictions


def _pred(label: int, score: float, x0: int = 10) -> ImagePredictions:
    m = np.zeros((1, 40, 60), bool)
    m[0, 10:20, x0 : x0 + 10] = True
    return ImagePredictions(
        "img1",
        40,
        60,
        np.array([[x0, 10, x0 + 10, 20]]),
        np.array([score]),
        np.array([label]),
        masks=InstanceMasks.from_full(m),
    )


def _probs(tmp_path, p, image_id="img1"):
    f = tmp_path / "cell_type.json"
    f.write_text(
        json.dumps(
            {
                "format": "cell-type-probabilities",
                "version": 1,
                "classes": list(CLASSES),
                "images": {image_id: p},
            }
        )
    )
    return str(f)


def test_classifier_overrides_majority_above_threshold(tmp_path):
    preds = [_pred(CLASSES.index("astro"), 0.9), _pred(CLASSES.index("astro"), 0.8)]
    f = _probs(tmp_path, [0.05, 0.05, 0.9])  # cort
    out = fuse_image(
        preds,
        [1.0, 1.0],
        FusionParams(image_class="classifier", class_probabilities=f, classifier_threshold=0.6),
    )
    assert out.labels.tolist() == [CLASSES.index("cort")]
    # below the threshold the detectors' majority (astro) stands
    out = fuse_image(
        preds,
        [1.0, 1.0],
        FusionParams(image_class="classifier", class_probabilities=f, classifier_threshold=0.95),
    )
    assert out.labels.tolist() == [CLASSES.index("astro")]
    # an image the classifier never saw keeps the majority too
    g = _probs(tmp_path, [0.05, 0.05, 0.9], image_id="other")
    out = fuse_image(preds, [1.0, 1.0], FusionParams(image_class="classifier", class_probabilities=g))
    assert out.labels.tolist() == [CLASSES.index("astro")]


def test_classifier_class_drives_per_class_thresholds(tmp_path):
    preds = [_pred(CLASSES.index("astro"), 0.5)]
    f = _probs(tmp_path, [0.9, 0.05, 0.05])  # shsy5y, whose score threshold drops the instance
    params = FusionParams(image_class="classifier", class_probabilities=f, score_thr={"shsy5y": 0.6})
    assert len(fuse_image(preds, [1.0], params)) == 0
    params = FusionParams(image_class="majority", score_thr={"shsy5y": 0.6})
    assert len(fuse_image(preds, [1.0], params)) == 1


def test_classifier_rule_needs_a_file():
    with pytest.raises(ValueError, match="class_probabilities"):
        FusionParams(image_class="classifier")
    with pytest.raises(ValueError, match="classifier_threshold"):
        FusionParams(image_class="classifier", class_probabilities="x.json", classifier_threshold=1.5)


def test_config_accepts_classifier_keys(tmp_path):
    from ensemble.config import EnsembleConfig

    f = _probs(tmp_path, [0.1, 0.1, 0.8])
    cfg = EnsembleConfig.from_dict(
        {
            "name": "e",
            "models": [{"predictions": "a.npz"}],
            "fusion": {"image_class": "classifier", "class_probabilities": f, "classifier_threshold": 0.7},
        }
    )
    assert (cfg.fusion.image_class, cfg.fusion.class_probabilities, cfg.fusion.classifier_threshold) == (
        "classifier",
        f,
        0.7,
    )
    assert cfg.to_dict()["fusion"]["class_probabilities"] == f
