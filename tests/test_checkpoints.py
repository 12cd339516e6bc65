"""custom_modules.checkpoints: the key comparison and the fit check of tools/infer.py, tools/test.py and the bundle."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("mmdet")

import torch  # noqa: E402

from custom_modules.checkpoints import (  # noqa: E402
    CheckpointMismatch,
    build_model,
    check_checkpoint_fits,
    class_dependent_keys,
    compare_state_dicts,
)
from custom_modules.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRCNN_DEMO = REPO / "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py"
YOLOX_DEMO = REPO / "configs/yolox/yolox_tiny_demo-cpu_sartorius.py"


def _save(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


def test_compare_state_dicts_sorts_every_key() -> None:
    model = {"a": torch.zeros(2), "b": torch.zeros(3), "cls": torch.zeros(3, 4), "c": torch.zeros(1)}
    ckpt = {"module.a": torch.ones(2), "b": torch.ones(4), "cls": torch.ones(80, 4), "extra": torch.ones(1)}
    rep = compare_state_dicts(model, ckpt, {"cls"})
    assert rep.loaded == ["a"]
    assert rep.reinitialized == ["cls"]
    assert rep.missing == ["c"]
    assert rep.unexpected == ["extra"]
    assert rep.mismatched == [("b", [3], [4])]
    assert not rep.exact()
    text = "; ".join(rep.problems())
    assert "missing key(s) (c)" in text and "unexpected key(s) (extra)" in text and "b: model (3,)" in text
    assert compare_state_dicts({"a": torch.zeros(2)}, {"a": torch.ones(2)}).exact()


def test_class_dependent_keys_of_demo_detectors() -> None:
    assert class_dependent_keys(load_config(YOLOX_DEMO)) == {
        f"bbox_head.multi_level_conv_cls.{i}.{p}" for i in range(3) for p in ("weight", "bias")
    }
    assert class_dependent_keys(load_config(MRCNN_DEMO)) == {
        f"roi_head.{m}.{p}"
        for m in ("bbox_head.fc_cls", "bbox_head.fc_reg", "mask_head.conv_logits")
        for p in ("weight", "bias")
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    return {
        "mrcnn": _save(build_model(load_config(MRCNN_DEMO)), d / "mrcnn.pth"),
        "yolox": _save(build_model(load_config(YOLOX_DEMO)), d / "yolox.pth"),
    }


def test_fit_check_accepts_own_and_refuses_other(ckpts: dict[str, Path]) -> None:
    rep = check_checkpoint_fits(MRCNN_DEMO, ckpts["mrcnn"])
    assert rep.exact() and rep.loaded
    with pytest.raises(CheckpointMismatch) as e:
        check_checkpoint_fits(MRCNN_DEMO, ckpts["yolox"])
    msg = str(e.value)
    assert "missing key(s)" in msg and "unexpected key(s)" in msg and "backbone" in msg
    assert "does not fit" in msg and str(ckpts["yolox"]) in msg


def _image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.full((40, 50), 120, np.uint8))
    return d


def test_infer_cli_refuses_other_models_checkpoint(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The Mask R-CNN config with a YOLOX checkpoint: exit 2 before any prediction, keys named."""
    from workflow.cli.infer import main

    out = tmp_path / "p.npz"
    rc = main(
        [str(MRCNN_DEMO), str(ckpts["yolox"]), "--images", str(_image_dir(tmp_path)), "--out", str(out),
         "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.startswith("infer.py: error:") and "missing key(s)" in err and "backbone." in err


def test_infer_cli_refuses_other_class_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint of the same architecture with 80-class heads is refused for inference (random class heads)."""
    from mmengine.config import Config

    from workflow.cli.infer import main

    cfg = load_config(YOLOX_DEMO)
    cfg80 = Config(cfg.to_dict())
    cfg80.model.bbox_head.num_classes = 80
    ckpt = _save(build_model(cfg80), tmp_path / "yolox80.pth")
    rc = main(
        [str(YOLOX_DEMO), str(ckpt), "--images", str(_image_dir(tmp_path)), "--out", str(tmp_path / "p.npz"),
         "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "shape mismatch" in err and "multi_level_conv_cls" in err


def test_test_cli_refuses_before_any_work(ckpts: dict[str, Path], tmp_path: Path, capsys) -> None:
    from workflow.cli.test import main

    rc = main([str(MRCNN_DEMO), str(ckpts["yolox"]), "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("test.py: error:") and "does not fit" in err
    assert not (tmp_path / "w").exists()


def test_bundle_check_uses_the_same_comparison(ckpts: dict[str, Path]) -> None:
    from workflow.bundle import BundleError, check_checkpoint_loads, inference_config, strip_checkpoint

    cfg = inference_config(MRCNN_DEMO)
    sd = strip_checkpoint(ckpts["mrcnn"])[0]["state_dict"]
    n = check_checkpoint_loads(cfg, sd, "model 'm'")
    assert n == sum(v.numel() for v in build_model(cfg).parameters())
    bad = strip_checkpoint(ckpts["yolox"])[0]["state_dict"]
    with pytest.raises(
        BundleError, match=r"model 'm': the checkpoint does not load into the config: .*missing"
    ):
        check_checkpoint_loads(cfg, bad, "model 'm'")
