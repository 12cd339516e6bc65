"""Shared fixtures: the real competition data in ../shared (skipped when absent) and a tiny prepared dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_COCO = SHARED / "data" / "sartorius_real" / "val_fold0_part1_coco.json"
REAL_IMAGES = SHARED / "data" / "sartorius_real" / "images"


def _fix_mmseg_scope() -> None:
    """The onedl fork of mmsegmentation is installed as a package whose name mmengine does not map.

    mmengine maps the ``mmseg::`` config scope to the pip package ``mmsegmentation``; point it at the module.
    """
    try:
        from mmengine.config import utils as cfg_utils
    except ImportError:  # the ensemble tests run without OpenMMLab
        return
    cfg_utils.MODULE2PACKAGE["mmseg"] = "mmseg"


_fix_mmseg_scope()

# Property-based fuzzing profiles (tests/test_fuzz_parsers.py): ``fast`` bounds `make test`, ``thorough`` is chosen by
# `make test-slow` (``--hypothesis-profile=thorough``) and runs at least 10,000 examples per parser. A per-example
# deadline turns a hang into a failure.
settings.register_profile("fast", max_examples=150, deadline=5000, derandomize=True)
settings.register_profile("thorough", max_examples=10_000, deadline=5000)
settings.load_profile("fast")


@pytest.fixture(scope="session")
def real_coco_path() -> Path:
    """Real ground truth of 56 Sartorius training images (COCO, uncompressed RLE)."""
    if not REAL_COCO.is_file():
        pytest.skip(
            f"real Sartorius data not available: {REAL_COCO} is absent (../shared not beside the repo)"
        )
    return REAL_COCO


@pytest.fixture(scope="session")
def real_images_dir() -> Path:
    """Four real unlabeled 704x520 Sartorius images."""
    if not REAL_IMAGES.is_dir():
        pytest.skip(f"real Sartorius images not available: {REAL_IMAGES} is absent")
    return REAL_IMAGES


@pytest.fixture(scope="session")
def tiny_sartorius(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the Kaggle layout, prepared with 2 folds.

    Returns the data root holding ``train.csv``, ``train/``, ``test/``, ``annotations/fold{0,1}_{train,val}.json``,
    ``annotations/train_all.json``, ``semantic/`` and ``splits/``. Cell counts are scaled down (density 0.15)
    so that model tests stay fast on a CPU.
    """
    from celldata.prepare import prepare_sartorius
    from celldata.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_sartorius")
    generate_synthetic_dataset(root, n_images=6, n_test=2, seed=0, density=0.15, show_progress=False)
    prepare_sartorius(root, folds=2, seed=0)
    return root
