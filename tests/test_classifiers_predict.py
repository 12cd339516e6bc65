"""Image-level class probabilities (tools/classify_images.py) and the ensemble's classifier rule."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ensemble.image_class import classifier_label, image_labels, read_class_probabilities

ROOT = Path(__file__).resolve().parents[1]
SEM_CFG = ROOT / "configs/classifiers/sem-cnn5-fc40_sgd-300it_sartorius-tiles-128.py"


def _write(path: Path, images: dict, classes=("shsy5y", "astro", "cort")) -> Path:
    path.write_text(
        json.dumps(
            {"format": "cell-type-probabilities", "version": 1, "classes": list(classes), "images": images}
        )
    )
    return path


def test_classifier_label_hand_cases(tmp_path):
    classes = ["shsy5y", "astro", "cort"]
    assert classifier_label([0.1, 0.8, 0.1], classes, fallback=2, threshold=0.6) == (1, True)
    assert classifier_label([0.1, 0.5, 0.4], classes, fallback=2, threshold=0.6) == (
        2,
        False,
    )  # below: majority
    assert classifier_label(None, classes, fallback=0, threshold=0.6) == (0, False)  # image not classified
    # the file's class order is mapped by name onto the ensemble's
    assert classifier_label([0.9, 0.05, 0.05], ["cort", "astro", "shsy5y"], fallback=0, threshold=0.5) == (
        2,
        True,
    )
    f = _write(tmp_path / "p.json", {"a": [0.1, 0.8, 0.1], "b": [0.4, 0.3, 0.3]})
    assert image_labels({"a": 2, "b": 2, "c": 1}, f, 0.6) == {
        "a": (1, True),
        "b": (2, False),
        "c": (1, False),
    }


def test_read_class_probabilities_errors(tmp_path):
    with pytest.raises(ValueError, match=r"images\['b'\]"):
        read_class_probabilities(_write(tmp_path / "bad.json", {"a": [0.2, 0.8, 0.0], "b": [0.5, 0.6, 0.1]}))
    with pytest.raises(ValueError, match="classes"):
        read_class_probabilities(_write(tmp_path / "c.json", {}, classes=("dog",)))
    (tmp_path / "f.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="format"):
        read_class_probabilities(tmp_path / "f.json")


def test_predict_image_probabilities_folder(tmp_path):
    from mmengine.registry import MODELS

    import custom_modules.cls  # noqa: F401  (registers SEMCNN)
    from custom_modules.cls.predict import predict_image_probabilities, write_image_probabilities

    opts = {"model.input_size": 32, "model.num_blocks": 2, "test_dataloader.dataset.tile_size": 32}
    from custom_modules.config import load_config

    cfg = load_config(SEM_CFG, opts)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt = tmp_path / "m.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, ckpt)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name in ("aaa", "bbb"):
        cv2.imwrite(str(imgs / f"{name}.png"), rng.integers(0, 255, (70, 100)).astype(np.uint8))
    classes, probs, meta = predict_image_probabilities(SEM_CFG, ckpt, imgs, cfg_options=opts)
    assert classes == ["shsy5y", "astro", "cort"] and sorted(probs) == ["aaa", "bbb"]
    assert all(abs(sum(p) - 1) < 1e-6 and len(p) == 3 for p in probs.values())
    # the image's probabilities are the mean over its tiles (a 70x100 image: 3 x 4 tiles of 32)
    from custom_modules.cls.data import image_tiles, read_gray

    tiles = np.stack([t for _, t in image_tiles(read_gray(imgs / "aaa.png"), 32)])
    assert len(tiles) == 12
    model.eval()
    with torch.no_grad():
        x = model.data_preprocessor(
            {"inputs": torch.from_numpy(tiles).float()[:, None], "data_samples": None}
        )
        ref = model(x["inputs"]).softmax(1).mean(0)
    assert np.allclose(probs["aaa"], ref.numpy(), atol=1e-5)
    out = tmp_path / "probs.json"
    write_image_probabilities(out, classes, probs, meta)
    rc, rp = read_class_probabilities(out)
    assert rc == classes and np.allclose(rp["bbb"], probs["bbb"])
    with pytest.raises(ValueError, match="image-tile"):
        predict_image_probabilities(
            ROOT / "configs/classifiers/lipnet-4_adam-30e_sartorius-cells-28.py", ckpt, imgs
        )
