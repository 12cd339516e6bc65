"""Kill anywhere (slow): a small recipe (real tools, a few iterations per model, tiny synthetic data) is killed
with SIGKILL at seeded random moments spread over its stages and rerun after each kill. It finishes; steps
finished before a kill are skipped afterwards; the submission and summary are valid; no process of a killed run
survives; no output is partial (every prediction file, json and checkpoint reads; no temporary file is left)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

REPO = Path(__file__).resolve().parents[1]
SEED = 21
KILLS = 10
SHORT = {"train_cfg.max_iters": 3, "train_cfg.val_interval": 3, "default_hooks.checkpoint.interval": 1}


def _recipe(tmp_path: Path) -> Path:
    recipe = {
        "name": "kill",
        "data": {"synthetic": {"n_images": 6, "n_test": 2, "density": 0.2, "seed": 0}, "folds": 2,
                 "train_folds": [0]},
        "models": [
            {"name": "mask_rcnn", "config": "configs/mask_rcnn/mask-rcnn_r18_fpn_demo-cpu_sartorius.py",
             "role": "instance", "cfg_options": SHORT, "min_score": 0.0},
            {"name": "upernet", "config": "configs/upernet/upernet_r18_1xb2-250iter_sartorius-demo-256x256.py",
             "role": "semantic", "weight": 0.5, "cfg_options": SHORT, "min_score": 0.0},
        ],
        "ensemble": {"mode": "vote", "fusion": {"semantic_weight": 0.5}, "tune": {"rounds": 1, "cv": 2}},
        "outputs": {"submission": str(tmp_path / "sub.csv"), "overlays": 1},
    }  # fmt: skip
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _targets(recipe: Path, work: Path, rng: random.Random) -> list[str]:
    """``KILLS`` distinct steps in plan order, at least one per stage."""
    from workflow.recipe.config import load_recipe
    from workflow.recipe.plan import build_plan

    steps = build_plan(load_recipe(recipe), work_dir=work).steps
    by_stage: dict[str, list[str]] = {}
    for s in steps:
        by_stage.setdefault(s.stage, []).append(s.id)
    chosen = {rng.choice(ids) for ids in by_stage.values()}
    rest = [s.id for s in steps if s.id not in chosen and s.stage in ("train", "oof", "test", "tune")]
    chosen |= set(rng.sample(rest, max(0, min(len(rest), KILLS - len(chosen)))))
    order = [s.id for s in steps]
    return sorted(chosen, key=order.index)


class _Run:
    """One runner process with its output collected line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.started: dict[str, float] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.match(r"\[\s*\d+/\d+\] (\S+)\s+(run|resume): ", line)
            if m:
                self.started[m.group(1)] = time.monotonic()

    def running(self) -> str:
        """The last step that started."""
        return max(self.started, key=self.started.get) if self.started else "(none)"


def _tree(pid: int) -> list[int]:
    from workflow.supervisor import tree_pids

    return [pid, *tree_pids(pid)]


def _survivors(pids: list[int], timeout: float) -> list[int]:
    from workflow.supervisor import alive

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def _finished(lines: list[str]) -> set[str]:
    return {m.group(1) for ln in lines if (m := re.match(r"\[\s*\d+/\d+\] (\S+)\s+done in ", ln))}


def _skipped(lines: list[str]) -> set[str]:
    return {m.group(1) for ln in lines if (m := re.match(r"\[\s*\d+/\d+\] (\S+)\s+done \(.*skipped", ln))}


def _check_no_partial_output(work: Path, sub: Path) -> int:
    """Every output reads completely; returns how many files were checked."""
    import numpy as np

    from workflow.checkpoint_integrity import CORRUPT_DIR, checkpoint_problem

    tmp = [p for p in work.rglob(".*.tmp")]
    assert not tmp, f"temporary files left: {tmp}"
    n = 0
    for p in work.rglob("*"):
        if not p.is_file() or CORRUPT_DIR in p.parts or ".stale" in str(p):
            continue
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                for k in z.files:
                    z[k]  # noqa: B018 (reads and decompresses every member)
        elif (
            p.suffix == ".json" and ".stamps" not in p.parts and "vis_data" not in p.parts
        ):  # logs: JSON lines
            json.loads(p.read_text())
        elif p.suffix == ".pth":
            assert checkpoint_problem(p) is None, (p, checkpoint_problem(p))
        else:
            continue
        n += 1
    assert sub.read_text().startswith("id,predicted"), sub
    return n


@pytest.mark.slow
def test_recipe_survives_random_kills(tmp_path: Path) -> None:
    from workflow.bundle.submission import validate_submission

    rng = random.Random(SEED)
    recipe, work, sub = _recipe(tmp_path), tmp_path / "work", tmp_path / "sub.csv"
    targets = _targets(recipe, work, rng)
    cmd = [sys.executable, "-m", "workflow.cli.run_recipe", str(recipe), "--work-dir", str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t_start = time.monotonic()
    moments: list[str] = []
    previously_finished: set[str] = set()
    from workflow.recipe.config import load_recipe
    from workflow.recipe.plan import build_plan

    order = [s.id for s in build_plan(load_recipe(recipe), work_dir=work).steps]
    for k, target in enumerate(targets, 1):
        run = _Run(cmd, env)
        # the target, or the first step after it in plan order that starts (the target may be done already)
        hit = None
        while hit is None and run.proc.poll() is None:
            hit = next((s for s in list(run.started) if order.index(s) >= order.index(target)), None)
            time.sleep(0.05)
        if hit is None:  # the run ended before reaching the target
            run.reader.join(5)
            moments.append(f"kill {k}: none (the run ended before {target})")
            print(moments[-1], flush=True)
            break
        target = hit
        delay = rng.uniform(0.0, 6.0 if target.startswith("train/") else 1.5)
        time.sleep(max(0.0, run.started[target] + delay - time.monotonic()))
        pids = _tree(run.proc.pid)
        during = run.running()
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(30)
        t_kill = time.monotonic()
        left = _survivors(pids, timeout=30)
        moments.append(
            f"kill {k}: {delay:.2f} s after {target} started (running: {during}; "
            f"{len(pids)} processes, all gone {time.monotonic() - t_kill:.1f} s after the kill)"
        )
        print(moments[-1], flush=True)
        assert not left, f"kill {k}: processes of the killed run survive: {left}"
        run.reader.join(5)
        skipped, finished = _skipped(run.lines), _finished(run.lines)
        ran_again = previously_finished & set(run.started)
        assert not ran_again, f"kill {k}: finished steps ran again: {sorted(ran_again)}"
        assert previously_finished <= skipped, sorted(previously_finished - skipped)
        previously_finished |= finished
        for ln in run.lines:
            if "checkpoint" in ln and ("resuming" in ln or "starts over" in ln):
                print("    " + ln.strip(), flush=True)
    final = _Run(cmd, env)
    rc = final.proc.wait(900)
    final.reader.join(5)
    out = "".join(final.lines)
    assert rc == 0, out[-3000:]
    assert not (previously_finished & set(final.started)), "finished steps ran again"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "ran 0 step(s)" in again.stdout, again.stdout[-2000:]
    summary = json.loads((work / "summary.json").read_text())
    assert [m["name"] for m in summary["members"]] == ["mask_rcnn", "upernet"]
    report = validate_submission(sub, work / "data" / "test")
    n = _check_no_partial_output(work, sub)
    print(f"{len(moments)} kills; {report['images']} test images, {report['instances']} instances in the "
          f"submission; {n} output files read completely; total {time.monotonic() - t_start:.0f} s")  # fmt: skip
    print("\n".join(moments))
    assert sum(m.startswith("kill") and "after" in m for m in moments) >= 10
