"""Classifiers of issue 12: layer specs, samplers, crops, folds, metrics, transforms, SVM features."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn

from custom_modules.cls import (
    SEMCNN,
    ClsRandomAffine,
    ClsRandomFlip,
    ImbalanceSampler,
    LipNet,
    PackClsInputs,
    SartoriusImageTileDataset,
    SartoriusInstanceCropDataset,
)
from custom_modules.cls.cross_validation import summarize_folds
from custom_modules.cls.data import image_tiles, object_centred_crop
from custom_modules.cls.folds import grouped_stratified_folds
from custom_modules.cls.metrics import ClsMetric, classification_metrics, normalize_confusion
from custom_modules.cls.samplers import epoch_indices
from custom_modules.cls.svm import FEATURE_NAMES, object_features

CLASSES = ("shsy5y", "astro", "cort")


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("nb", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("fc", [None, 40])
def test_semcnn_shapes_and_widths(nb, fc):
    m = SEMCNN(num_blocks=nb, fc_hidden=fc, num_classes=2)
    out = m(torch.zeros(2, 1, 128, 128))
    assert out.shape == (2, 2)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 96, 128][:nb]
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == nb
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == nb
    lins = [x for x in m.modules() if isinstance(x, nn.Linear)]
    side = 128 // 2**nb
    assert lins[0].in_features == [16, 32, 64, 96, 128][nb - 1] * side * side
    if fc:
        assert [(lin.in_features, lin.out_features) for lin in lins][1:] == [(40, 2)] and lins[
            0
        ].out_features == 40
    else:
        assert len(lins) == 1


def test_semcnn5fc_flatten_is_2048_and_gaussian_init():
    torch.manual_seed(0)
    m = SEMCNN(5, 40)
    assert m.head[1].in_features == 2048  # paper Table 2: FC1 input 2048 x 1
    w = torch.cat([x.weight.flatten() for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))])
    w = w.detach()
    assert abs(float(w.std()) - 0.01) < 0.001 and abs(float(w.mean())) < 0.001
    with pytest.raises(ValueError, match="num_blocks"):
        SEMCNN(6)


@pytest.mark.parametrize(
    "variant,size,n_conv,n_pool",
    [("1", 28, 1, 1), ("2", 28, 2, 2), ("4", 28, 4, 2), ("4c", 28, 7, 0), ("6", 32, 6, 3)],
)
def test_lipnet_shapes_and_layers(variant, size, n_conv, n_pool):
    m = LipNet(variant, num_classes=3)
    assert m.input_size == size
    assert m(torch.zeros(4, 1, size, size)).shape == (4, 3)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert len(convs) == n_conv
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == n_pool
    assert all(c.out_channels == 32 for c in convs[:-1] if c.kernel_size == (3, 3))
    assert any(isinstance(x, nn.Dropout) for x in m.modules())
    if variant == "4c":
        assert [c.stride for c in convs].count((2, 2)) == 2
        assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 3
        assert not any(isinstance(x, nn.Linear) for x in m.modules())
    else:
        assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
        assert sum(isinstance(x, nn.Linear) for x in m.modules()) == 2


def test_classifier_modes():
    m = LipNet("4", num_classes=3, label_smoothing=0.0).eval()
    x = torch.randn(3, 1, 28, 28)
    ds = {"gt_label": torch.tensor([0, 1, 2]), "image_id": ["a", "b", "c"]}
    loss = m(x, ds, mode="loss")["loss"]
    ref = nn.functional.cross_entropy(m(x), ds["gt_label"])
    assert torch.allclose(loss, ref)
    preds = m(x, ds, mode="predict")
    assert [p["image_id"] for p in preds] == ["a", "b", "c"] and [p["gt_label"] for p in preds] == [0, 1, 2]
    assert all(
        abs(float(p["pred_score"].sum()) - 1) < 1e-5 and p["pred_label"] == int(p["pred_score"].argmax())
        for p in preds
    )
    with pytest.raises(ValueError, match="variant"):
        LipNet("3")


# ---------------------------------------------------------------- samplers
class _Labels:
    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def get_labels(self):
        return self.labels

    def __len__(self):
        return len(self.labels)


LABELS = np.array([0] * 100 + [1] * 23 + [2] * 7)


def test_oversample_balances_every_epoch():
    s = ImbalanceSampler(_Labels(LABELS), mode="oversample", seed=1)
    for epoch in range(3):
        s.set_epoch(epoch)
        idx = np.array(list(s))
        assert len(idx) == len(s) == 300
        assert np.bincount(LABELS[idx]).tolist() == [100, 100, 100]
        # every minority sample appears floor(100 / n) or ceil(100 / n) times
        counts = np.bincount(idx, minlength=len(LABELS))
        assert set(counts[100:123]) <= {4, 5} and set(counts[123:]) <= {14, 15}
        assert (counts[:100] == 1).all()


def test_undersample_drops_fraction_and_redraws():
    s = ImbalanceSampler(_Labels(LABELS), mode="undersample", fraction=0.2, seed=1)
    draws = []
    for epoch in range(3):
        s.set_epoch(epoch)
        idx = np.array(list(s))
        assert np.bincount(LABELS[idx]).tolist() == [80, 23, 7]
        assert len(np.unique(idx)) == len(idx) == len(s)
        draws.append(frozenset(set(range(100)) - set(idx.tolist())))
    assert len(set(draws)) == 3  # a new choice of dropped majority samples each epoch
    s.set_epoch(1)
    assert frozenset(set(range(100)) - set(s)) == draws[1]  # same epoch, same draw
    none = epoch_indices(LABELS, "none", 0.2, np.random.default_rng(0))
    assert sorted(none.tolist()) == list(range(len(LABELS)))
    with pytest.raises(ValueError, match="mode"):
        ImbalanceSampler(_Labels(LABELS), mode="smote")


# ---------------------------------------------------------------- crops / datasets
def test_object_centred_crop_centres_and_masks():
    img = np.full((100, 120), 50, np.uint8)
    mask = np.zeros((100, 120), np.uint8)
    mask[10:20, 80:100] = 1  # 20 wide, 10 high object off-centre
    img[mask > 0] = 200
    crop, m = object_centred_crop(img, mask, [80, 10, 20, 10], crop_size=40, margin=10)
    ys, xs = np.nonzero(m)
    assert abs(ys.mean() - 19.5) <= 1 and abs(xs.mean() - 19.5) <= 1  # object centred
    assert (crop[m == 0] == 50).sum() > 0  # surroundings kept
    masked, m2 = object_centred_crop(img, mask, [80, 10, 20, 10], crop_size=40, margin=10, masked=True)
    assert (masked[m2 == 0] == 0).all() and (masked[m2 > 0] == 200).all()
    # near the border the crop is zero-padded and still centred
    edge = np.zeros_like(mask)
    edge[0:6, 0:6] = 1
    c3, m3 = object_centred_crop(img, edge, [0, 0, 6, 6], crop_size=20, margin=7)
    ys, xs = np.nonzero(m3)
    assert abs(ys.mean() - 9.5) <= 1 and abs(xs.mean() - 9.5) <= 1 and c3[0, 0] == 0


def test_image_tiles_cover_the_image():
    img = np.arange(520 * 704, dtype=np.int64).reshape(520, 704).astype(np.uint8)
    tiles = image_tiles(img, 128)
    assert len(tiles) == 5 * 6 and all(t.shape == (128, 128) for _, t in tiles)
    assert max(y for (y, _), _ in tiles) == 520 - 128 and max(x for (_, x), _ in tiles) == 704 - 128
    assert len(image_tiles(img, 128, "center")) == 1 and image_tiles(img, 64, "whole")[0][1].shape == (64, 64)


def _write_coco(root: Path, n_samples: int = 6, per_class_cells=(6, 3, 2)) -> Path:
    """Tiny prepared-layout dataset: one 96x128 image per sample, classes cycling, bright discs."""
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n_samples):
        c = i % 3
        img = rng.integers(40, 60, (96, 128)).astype(np.uint8)
        iid = f"img{i:03d}"
        for _ in range(per_class_cells[c]):
            m = np.zeros((96, 128), np.uint8)
            cy, cx, r = rng.integers(15, 81), rng.integers(15, 113), 4 + 3 * c
            cv2.circle(m, (int(cx), int(cy)), int(r), 1, -1)
            img[m > 0] = 150 + 30 * c
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            x, y, w, h = cv2.boundingRect(m)
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=i + 1,
                    category_id=c + 1,
                    segmentation=rle,
                    area=int(m.sum()),
                    bbox=[x, y, w, h],
                    iscrowd=0,
                )
            )
        cv2.imwrite(str(root / "train" / f"{iid}.png"), img)
        images.append(
            dict(
                id=i + 1,
                file_name=f"train/{iid}.png",
                kaggle_id=iid,
                image_id=iid,
                height=96,
                width=128,
                cell_type=CLASSES[c],
                sample_id=f"s{i}",
            )
        )
    cats = [dict(id=k + 1, name=n) for k, n in enumerate(CLASSES)]
    path = root / "annotations" / "train_all.json"
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return path


def test_instance_crop_dataset(tmp_path):
    _write_coco(tmp_path)
    ds = SartoriusInstanceCropDataset(
        "annotations/train_all.json",
        data_root=str(tmp_path),
        crop_size=28,
        masked=True,
        pipeline=[dict(type="PackClsInputs")],
    )
    assert len(ds) == 2 * (6 + 3 + 2)
    assert np.bincount(ds.get_labels()).tolist() == [12, 6, 4]
    info = ds.get_data_info(0)
    ys, xs = np.nonzero(info["mask"])
    assert abs(ys.mean() - 13.5) <= 1.5 and abs(xs.mean() - 13.5) <= 1.5
    assert (info["img"][info["mask"] == 0] == 0).all()
    item = ds[0]
    assert item["inputs"].shape == (1, 28, 28) and item["data_samples"]["gt_label"] == 0
    sub = SartoriusInstanceCropDataset(
        "annotations/train_all.json", data_root=str(tmp_path), sample_ids=["s1"]
    )
    assert len(sub) == 3 and set(sub.get_groups()) == {"s1"}


def test_image_tile_dataset(tmp_path):
    _write_coco(tmp_path)
    ds = SartoriusImageTileDataset("annotations/train_all.json", data_root=str(tmp_path), tile_size=64)
    assert len(ds) == 6 * 2 * 2 and ds.get_labels().tolist()[:4] == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="mode"):
        SartoriusImageTileDataset("annotations/train_all.json", data_root=str(tmp_path), mode="random")


# ---------------------------------------------------------------- transforms
def test_transforms():
    img = np.zeros((28, 28), np.uint8)
    img[10:18, 10:18] = 255
    flipped = ClsRandomFlip(horizontal=True, vertical=False, prob=1.0)(dict(img=img[:, ::-1].copy()))["img"]
    assert (flipped == img).all()
    zoomed = ClsRandomAffine(zoom=(0.5, 0.5), border_mode="constant")(dict(img=img.copy()))["img"]
    assert (zoomed > 127).sum() > 3 * (img > 127).sum()  # zoom < 1 magnifies (Keras convention)
    out = ClsRandomAffine(rotation=180, shift=0.1, shear=0.2, zoom=(0.8, 1.0))(
        dict(img=img.copy(), mask=img.copy() // 255)
    )
    assert out["img"].shape == (28, 28) and set(np.unique(out["mask"])) <= {0, 1}
    ident = ClsRandomAffine()(dict(img=img.copy()))["img"]
    assert (ident == img).all()
    packed = PackClsInputs()(dict(img=img, gt_label=2, image_id="x"))
    assert packed["inputs"].dtype == torch.float32 and packed["data_samples"] == {
        "image_id": "x",
        "gt_label": 2,
    }


# ---------------------------------------------------------------- folds and metrics
def test_grouped_stratified_folds():
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for g in range(40):
        c = g % 3
        n = int(rng.integers(5, 30))
        labels += [c] * n
        groups += [f"g{g}"] * n
    labels, groups = np.array(labels), np.array(groups, dtype=object)
    folds = grouped_stratified_folds(labels, groups, 5, seed=0)
    seen = np.zeros(len(labels), int)
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])  # a sample_id is never split
        seen[te] += 1
        max_group = max(
            np.bincount(np.unique(groups[labels == c], return_inverse=True)[1]).max() for c in range(3)
        )
        for c in range(3):
            expected = (labels == c).sum() / 5
            assert abs((labels[te] == c).sum() - expected) <= max_group  # proportions kept within one sample
    assert (seen == 1).all()
    with pytest.raises(ValueError, match="distinct"):
        grouped_stratified_folds([0, 1, 0], ["a", "a", "b"], 3)


def test_classifier_folds_equal_the_detectors_folds(tmp_path):
    """Tiles and instance crops of the same images and seed fall in the detectors' folds (celldata.prepare)."""
    from celldata.prepare import make_folds

    rng = np.random.default_rng(3)
    image_ids = [f"im{i:02d}" for i in range(30)]
    sample_of = {i: f"s{int(rng.integers(0, 12))}" for i in image_ids}
    type_of = {}  # one cell type per sample, as in Sartorius
    for i in image_ids:
        type_of[i] = CLASSES[int(sample_of[i][1:]) % 3]
    detector_fold = dict(
        zip(
            image_ids,
            make_folds(image_ids, [type_of[i] for i in image_ids], [sample_of[i] for i in image_ids], 4, 7),
        )
    )
    # a variable number of samples per image, in shuffled order
    samples = [i for i in image_ids for _ in range(int(rng.integers(1, 6)))]
    samples = [samples[j] for j in rng.permutation(len(samples))]
    labels = [CLASSES.index(type_of[i]) for i in samples]
    folds = grouped_stratified_folds(
        labels, [sample_of[i] for i in samples], 4, seed=7, image_ids=samples, classes=CLASSES
    )
    for k, (tr, te) in enumerate(folds):
        assert {samples[j] for j in te} == {i for i in image_ids if detector_fold[i] == k}
        assert sorted(tr.tolist() + te.tolist()) == list(range(len(samples)))

    # the same through a classifier dataset of a prepared COCO file
    _write_coco(tmp_path, n_samples=9)
    coco = json.loads((tmp_path / "annotations" / "train_all.json").read_text())
    ims = coco["images"]
    fold_of = make_folds([im["kaggle_id"] for im in ims], [im["cell_type"] for im in ims],
                         [im["sample_id"] for im in ims], 3, 0)  # fmt: skip
    expected = {im["kaggle_id"]: int(f) for im, f in zip(ims, fold_of)}
    ds = SartoriusInstanceCropDataset("annotations/train_all.json", data_root=str(tmp_path), crop_size=28)
    ids = ds.get_image_ids()
    folds = grouped_stratified_folds(ds.get_labels(), ds.get_groups(), 3, 0, image_ids=ids)
    for k, (_, te) in enumerate(folds):
        assert {ids[j] for j in te} == {i for i, f in expected.items() if f == k}


def test_confusion_normalization_hand_case():
    cm = np.array([[8, 2, 0], [1, 1, 2], [0, 0, 0]])
    n = normalize_confusion(cm)
    assert np.allclose(n, [[0.8, 0.2, 0], [0.25, 0.25, 0.5], [0, 0, 0]])
    y_true = [0] * 8 + [0] * 2 + [1, 1, 1, 1]
    y_pred = [0] * 8 + [1] * 2 + [0, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, 3)
    assert m["confusion"] == cm.tolist() and np.allclose(m["tpr"], [0.8, 0.25, 0])
    assert np.allclose(m["precision"], [8 / 9, 1 / 3, 0]) and m["accuracy"] == pytest.approx(9 / 14)
    s = summarize_folds([cm, np.array([[2, 0, 0], [0, 2, 0], [0, 0, 4]])], CLASSES)
    assert np.allclose(s["confusion_normalized_mean"], [[0.9, 0.1, 0], [0.125, 0.625, 0.25], [0, 0, 1]])
    assert s["mean"]["tpr"][2] == pytest.approx(1.0)  # cort only counted in the fold holding it
    metric = ClsMetric(classes=CLASSES)
    metric.process({}, [dict(gt_label=t, pred_label=p) for t, p in zip(y_true, y_pred)])
    out = metric.compute_metrics(metric.results)
    assert out["cm_shsy5y_astro"] == 2 and out["tpr_astro"] == pytest.approx(0.25)


# ---------------------------------------------------------------- SVM features
def test_object_features_disc():
    m = np.zeros((80, 80), np.uint8)
    cv2.circle(m, (40, 40), 20, 1, -1)
    img = (m * 180 + 20).astype(np.uint8)
    f = dict(zip(FEATURE_NAMES, object_features(m, img)))
    assert f["area"] == m.sum()
    assert 0.85 < f["circularity"] < 1.15 and f["eccentricity"] < 0.1
    assert f["int_mean"] == pytest.approx(200) and f["ring_minus_object"] == pytest.approx(-180)
    assert len(FEATURE_NAMES) == len(object_features(m, img))
    with pytest.raises(ValueError, match="empty"):
        object_features(np.zeros((5, 5)), np.zeros((5, 5)))


def test_svm_cross_validation_end_to_end(tmp_path):
    from custom_modules.cls.cross_validation import cross_validate

    _write_coco(tmp_path, n_samples=9)
    cfg = Path(__file__).resolve().parents[1] / "configs/classifiers/svm-rbf_hand-features_sartorius-cells.py"
    s = cross_validate(
        cfg, folds=3, seed=0, work_dir=tmp_path / "cv", cfg_options={"data_root": str(tmp_path)}
    )
    assert s["n_samples"] == 3 * (6 + 3 + 2) and len(s["folds"]) == 3
    assert s["mean"]["accuracy"] > 0.9  # disc size and brightness separate the toy classes
    assert (tmp_path / "cv" / "confusion_normalized.png").stat().st_size > 1000
    assert "| shsy5y |" in (tmp_path / "cv" / "cv_summary.md").read_text()


# ---------------------------------------------------------------- configs and the CNN cross-validation path
CFG_DIR = Path(__file__).resolve().parents[1] / "configs" / "classifiers"


@pytest.mark.parametrize("cfg_path", sorted(p.name for p in CFG_DIR.glob("*.py")))
def test_configs_build(cfg_path):
    from mmengine.registry import MODELS

    from custom_modules.config import library_of, load_config
    from custom_modules.runner_utils import register_library

    cfg = load_config(CFG_DIR / cfg_path)
    assert library_of(cfg) == "mmengine"
    register_library(cfg)
    assert cfg.test_evaluator.type == "ClsMetric"
    if cfg.get("svm") is not None:
        return
    model = MODELS.build(cfg.model)
    size = model.input_size
    ds = cfg.train_dataloader.dataset
    assert ds.get("crop_size", ds.get("tile_size")) == size  # dataset crops fit the model input
    assert model(torch.zeros(2, 1, size, size)).shape == (2, 3)
    opt = cfg.optim_wrapper.optimizer
    if model.__class__.__name__ == "SEMCNN":  # the SEM paper's optimiser
        assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ("SGD", 1e-3, 0.9, 1e-4)
        assert cfg.train_dataloader.batch_size == 32 and cfg.train_cfg.max_iters == 300


@pytest.mark.slow
def test_cnn_cross_validation_end_to_end(tmp_path):
    from custom_modules.cls.cross_validation import cross_validate

    _write_coco(tmp_path, n_samples=6)
    s = cross_validate(
        CFG_DIR / "lipnet-1_adam-30e_sartorius-cells-28.py",
        folds=2,
        seed=0,
        work_dir=tmp_path / "cv",
        cfg_options={"data_root": str(tmp_path), "train_cfg.max_epochs": 1},
    )
    assert len(s["folds"]) == 2 and s["n_samples"] == 2 * (6 + 3 + 2)
    assert sum(f["train"] + f["test"] for f in s["fold_sizes"]) == 2 * s["n_samples"]
    assert (tmp_path / "cv" / "cv_summary.json").exists() and (tmp_path / "cv" / "fold1").is_dir()


def test_cls_metric_image_accuracy():
    metric = ClsMetric(classes=CLASSES)
    # image a (cort): two tiles, mean score favours cort although one tile says astro; image b (astro): wrong
    samples = [
        dict(gt_label=2, pred_label=1, image_id="a", pred_score=[0.0, 0.6, 0.4]),
        dict(gt_label=2, pred_label=2, image_id="a", pred_score=[0.0, 0.1, 0.9]),
        dict(gt_label=1, pred_label=0, image_id="b", pred_score=[0.7, 0.2, 0.1]),
    ]
    metric.process({}, samples)
    out = metric.compute_metrics(metric.results)
    assert out["accuracy"] == pytest.approx(1 / 3)
    assert out["image_accuracy"] == pytest.approx(0.5) and out["n_images"] == 2
