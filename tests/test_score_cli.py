"""``python -m ensemble.score``: scores, JSON output, and one clear error + exit code 2 on malformed input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from celldata.instances import InstanceMasks
from celldata.rle import kaggle_rle_encode
from ensemble.metrics import evaluate
from ensemble.score import main
from ensemble.submission import read_kaggle_truth, write_submission

REPO = Path(__file__).resolve().parents[1]
H, W = 24, 40
HEADER = "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta\n"


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture()
def truth_csv(tmp_path: Path) -> Path:
    rows = [
        ("img1", _box_mask(0, 0, 10, 10), "astro"),
        ("img1", _box_mask(20, 0, 30, 10), "astro"),
        ("img2", _box_mask(5, 5, 15, 15), "cort"),
        ("img3", _box_mask(0, 12, 8, 20), "shsy5y"),
    ]
    path = tmp_path / "train.csv"
    path.write_text(HEADER + "".join(f"{i},{kaggle_rle_encode(m)},{W},{H},{ct},,,s,\n" for i, m, ct in rows))
    return path


def _submission(tmp_path: Path, truth_csv: Path) -> Path:
    truth, _ = read_kaggle_truth(truth_csv)
    pred = {
        "img1": InstanceMasks.from_full(np.stack([_box_mask(0, 0, 10, 8), _box_mask(32, 15, 36, 20)])),
        "img2": truth["img2"],
    }
    path = tmp_path / "sub.csv"
    write_submission(path, ["img1", "img2", "img3"], pred)
    return path


def test_score_json(tmp_path: Path, truth_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = _submission(tmp_path, truth_csv)
    assert main(["--truth", str(truth_csv), "--submission", str(sub), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # img1: truth A (100 px) vs pred a (80 px) IoU 0.8 -> TP up to t=0.75; truth B missed, one spurious pred.
    #   t <= 0.75: TP 1, FP 1, FN 1 -> 1/3 (6 thresholds); t >= 0.80: 0/(0+2+2) = 0 -> image score 0.2
    # img2: perfect -> 1.0; img3: truth but no prediction -> 0.0
    assert out["score"] == pytest.approx((0.2 + 1.0 + 0.0) / 3)
    assert out["per_class"] == pytest.approx({"shsy5y": 0.0, "astro": 0.2, "cort": 1.0})
    assert list(out["per_threshold"]) == [f"{t:.2f}" for t in np.arange(0.5, 0.96, 0.05)]
    assert out["per_threshold"]["0.50"] == pytest.approx((1 / 3 + 1) / 3)
    assert out["n_images"] == 3 and out["n_missing"] == 0 and "per_image" not in out
    # agrees with the library
    truth, types = read_kaggle_truth(truth_csv)
    assert out["score"] == pytest.approx(evaluate(truth, {"img2": truth["img2"]}, types).score + 0.2 / 3)


def test_score_table_report_and_missing_ids(
    tmp_path: Path, truth_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = tmp_path / "partial.csv"
    sub.write_text(f"id,predicted\nimg2,{kaggle_rle_encode(_box_mask(5, 5, 15, 15))}\n")
    report = tmp_path / "out" / "report.json"
    assert main(["--truth", str(truth_csv), "--submission", str(sub), "--report", str(report)]) == 0
    cap = capsys.readouterr()
    assert "score  0.3333" in cap.out and "per class" in cap.out
    assert cap.err.count("\n") == 1 and "2 of 3 ground-truth image(s) have no row" in cap.err
    assert "--images-from submission" in cap.err
    full = json.loads(report.read_text())
    assert full["per_image"] == {"img1": 0.0, "img2": 1.0, "img3": 0.0} and full["n_missing"] == 2


OVERLAP_A = kaggle_rle_encode(_box_mask(0, 0, 4, 4))
OVERLAP_B = kaggle_rle_encode(_box_mask(3, 3, 6, 6))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,pred\nimg1,1 2\n", "expected exactly 'id,predicted'"),
        ("id,predicted\nimg1,1 2\nid,predicted\n", "row 2 (line 3): duplicate header row"),
        ("id,predicted\nnope,1 2\n", "1 of 1 submitted images are not in the truth"),
        ("id,predicted\nimg1,1 2 3\n", "row 1 (line 2), id 'img1', field 'predicted': RLE has an odd number"),
        ("id,predicted\nimg1,1 2\nimg2,960 2\n", "row 2 (line 3), id 'img2', field 'predicted': RLE run 0"),
        (f"id,predicted\nimg3,{OVERLAP_A}\nimg3,{OVERLAP_B}\n", "row 2 (line 3), id 'img3': mask overlaps"),
        ("id,predicted\nimg1,1 2,9\n", "row 1 (line 2): 3 fields"),
    ],
)
def test_score_malformed_submission(
    tmp_path: Path, truth_csv: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    sub = tmp_path / "bad.csv"
    sub.write_text(text)
    report = tmp_path / "report.json"
    code = main(["--truth", str(truth_csv), "--submission", str(sub), "--json", "--report", str(report)])
    cap = capsys.readouterr()
    assert code == 2
    assert cap.out == ""  # no partial score printed
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: ") and message in cap.err
    assert not report.exists()


def test_score_malformed_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / "train.csv"
    truth.write_text(HEADER + f"img1,1 2,{W},abc,astro,,,s,\n")
    sub = tmp_path / "sub.csv"
    sub.write_text("id,predicted\nimg1,\n")
    assert main(["--truth", str(truth), "--submission", str(sub)]) == 2
    assert "row 1 (line 2), id 'img1', field 'height': 'abc' is not an integer" in capsys.readouterr().err
    assert main(["--truth", str(tmp_path / "none.csv"), "--submission", str(sub)]) == 2
    assert "not found" in capsys.readouterr().err


def test_score_module_entry_point(tmp_path: Path, truth_csv: Path) -> None:
    sub = _submission(tmp_path, truth_csv)
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensemble.score",
            "--truth",
            str(truth_csv),
            "--submission",
            str(sub),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["score"] == pytest.approx(0.4)
    sub.write_text("id,predicted\nimg1,0 5\n")
    bad = subprocess.run(
        [sys.executable, "-m", "ensemble.score", "--truth", str(truth_csv), "--submission", str(sub)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "start 0 < 1" in bad.stderr


def test_tuned_config_labels_the_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--tuned-config labels a score in-sample when the scored images are those the ensemble was tuned on."""
    import yaml

    from celldata.instances import InstanceMasks
    from ensemble.submission import write_submission

    m = np.zeros((6, 8), dtype=bool)
    m[1:3, 2:5] = True
    inst = InstanceMasks.from_full(m[None])
    truth = tmp_path / "t.csv"
    truth.write_text(
        "id,annotation,width,height\n" + "".join(f"{k},{inst.to_kaggle_rles()[0]},8,6\n" for k in "ab")
    )
    sub = tmp_path / "s.csv"
    write_submission(sub, ["a", "b"], {"a": inst, "b": inst})
    cfg = {"name": "e", "models": [{"predictions": "x.npz"}], "tuning": {"images": ["a", "b"]}}
    for images, label in ((["a", "b"], "in-sample"), (["c"], "held-out"), (["a"], "partly in-sample")):
        cfg["tuning"]["images"] = images
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        argv = [
            "--truth",
            str(truth),
            "--submission",
            str(sub),
            "--json",
            "--tuned-config",
            str(tmp_path / "c.yaml"),
        ]
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["evaluation"] == label


def test_images_from_submission_scores_only_the_submitted_images(
    tmp_path: Path, truth_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A validation fold's submission against the whole train.csv: --images-from submission leaves the
    unpredicted truth images out instead of scoring them 0."""
    sub = tmp_path / "partial.csv"
    sub.write_text(f"id,predicted\nimg2,{kaggle_rle_encode(_box_mask(5, 5, 15, 15))}\n")
    argv = ["--truth", str(truth_csv), "--submission", str(sub), "--json"]
    assert main([*argv, "--images-from", "submission"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["score"] == pytest.approx(1.0) and out["n_images"] == 1 and out["n_missing"] == 0
    assert cap.err == ""
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(1 / 3)


def test_submission_with_images_the_truth_lacks(
    tmp_path: Path, truth_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A test submission scored against train.csv: one line saying the truth does not fit, exit 2, no score."""
    sub = tmp_path / "test_sub.csv"
    sub.write_text("id,predicted\ntest_a,1 2\ntest_b,\nimg1,\n")
    report = tmp_path / "r.json"
    for extra in ([], ["--images-from", "submission"]):
        argv = ["--truth", str(truth_csv), "--submission", str(sub), "--report", str(report), *extra]
        assert main(argv) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and cap.err.count("\n") == 1
        assert "2 of 3 submitted images are not in the truth" in cap.err and "'test_a'" in cap.err
        assert "does not fit the submission" in cap.err
        assert not report.exists()


def test_report_naming_a_folder_fails_before_scoring(
    tmp_path: Path, truth_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = _submission(tmp_path, truth_csv)
    (tmp_path / "adir").mkdir()
    assert (
        main(["--truth", str(truth_csv), "--submission", str(sub), "--report", str(tmp_path / "adir")]) == 2
    )
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1 and "--report" in cap.err and "is a folder" in cap.err
