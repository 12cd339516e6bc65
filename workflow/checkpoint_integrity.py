"""Checkpoints cut short by a kill, a full disk or a file-size limit: found before a training resumes.

mmengine's ``CheckpointHook`` writes ``iter_N.pth`` in place, then the ``last_checkpoint`` marker naming it, and
with ``max_keep_ckpts`` it deletes the oldest checkpoint *before* writing the new one. A kill mid-save therefore
leaves a truncated ``iter_N.pth`` (the marker still naming the previous one, which may be deleted already), and a
kill while the marker is written leaves it empty. :func:`resume_point` checks the checkpoint the marker names
(a torch checkpoint is a zip archive: its central directory must be there and every member's CRC must match); a bad one is moved to ``<work_dir>/corrupt/`` and the newest good
``iter_*.pth`` / ``epoch_*.pth`` takes its place (the marker is rewritten atomically), or, with none left,
training starts over. The returned :class:`ResumePoint` says which, in one line.

Used by ``workflow.cli.train --resume`` (:func:`resume_arg`) and by the recipe runner before it resumes a
training step.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from celldata.fileio import atomic_write_text

__all__ = [
    "ResumePoint",
    "checkpoint_problem",
    "named_checkpoint",
    "resume_point",
    "resume_arg",
    "CORRUPT_DIR",
]

CORRUPT_DIR = "corrupt"
_CKPT_NAME = re.compile(r"^(iter|epoch)_(\d+)\.pth$")


@dataclass
class ResumePoint:
    """Where an interrupted training continues.

    Attributes:
        checkpoint: The checkpoint to resume from (``None``: no good one, training starts over).
        set_aside: Bad checkpoints moved to ``<work_dir>/corrupt/`` (and a bad marker).
        note: One line saying what was found and which way training goes.
    """

    checkpoint: Path | None
    set_aside: list[Path] = field(default_factory=list)
    note: str = ""


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint file, or ``None`` when it is complete.

    A zip checkpoint (what ``torch.save`` writes since torch 1.6, and so mmengine) is complete when its central
    directory reads and every member's CRC matches (this reads the file once, without unpickling). A file that
    does not start as a zip archive is not checked beyond being non-empty.

    Args:
        path: The checkpoint.

    Returns:
        ``None``, or a short reason (``missing``, ``empty``, ``truncated or corrupt zip archive``, ...).
    """
    p = Path(path)
    if not p.is_file():
        return "missing"
    if p.stat().st_size == 0:
        return "empty"
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            return f"truncated or corrupt zip archive ({e})"
        return None if bad is None else f"corrupt member {bad} (CRC mismatch)"
    with open(p, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return "truncated zip archive (no central directory)"
    return None  # not a zip checkpoint (torch < 1.6 format or another writer's): not checked


def _ckpt_number(p: Path) -> int:
    m = _CKPT_NAME.match(p.name)
    return int(m.group(2)) if m else -1


def named_checkpoint(marker: Path, base: Path | None = None) -> Path | None:
    """The checkpoint an mmengine ``last_checkpoint`` marker names, or None for an empty or unreadable marker.

    Args:
        marker: The ``last_checkpoint`` file.
        base: Folder a relative name is resolved against (None: the current directory); a relative name that is
            not a file there is taken as a file of the marker's own folder.
    """
    try:
        text = marker.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text:
        return None
    p = Path(text)
    q = p if p.is_absolute() or base is None else Path(base) / p
    if q.is_file() or q.is_absolute():
        return q
    return marker.parent / p.name


def _set_aside(work_dir: Path, p: Path, discard: bool = False) -> Path:
    if discard:
        p.unlink()
        return p
    dest_dir = work_dir / CORRUPT_DIR
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / p.name
    if dest.exists():
        dest.unlink()
    shutil.move(str(p), dest)
    return dest


def resume_point(work_dir: str | os.PathLike, discard: bool = False) -> ResumePoint:
    """Check the checkpoint ``last_checkpoint`` names; on a bad one fall back to the newest good checkpoint.

    Bad checkpoints (and a marker naming nothing usable) are moved to ``<work_dir>/corrupt/``; a fallback
    rewrites the marker atomically, so mmengine's own ``--resume`` finds the good one too. Bad checkpoints
    newer than the chosen one are set aside as well (nothing half-written stays among the checkpoints).

    Args:
        work_dir: The training's work dir.
        discard: Delete bad files instead of setting them aside (after a failed write: nothing to look at).

    Returns:
        The :class:`ResumePoint`.
    """
    wd = Path(work_dir)
    gone = "deleted" if discard else f"set aside in {CORRUPT_DIR}/"
    marker = wd / "last_checkpoint"
    named = named_checkpoint(marker) if marker.is_file() else None
    cands = sorted((p for p in wd.glob("*.pth") if _CKPT_NAME.match(p.name)), key=_ckpt_number, reverse=True)
    if named is not None:
        why = checkpoint_problem(named)
        if why is None:
            newer = [c for c in cands if _ckpt_number(c) > _ckpt_number(named) and checkpoint_problem(c)]
            aside = [_set_aside(wd, c, discard) for c in newer]
            extra = f" ({', '.join(c.name for c in newer)} cut short: {gone})" if newer else ""
            return ResumePoint(named, aside, f"resuming from {named.name}{extra}")
        first = f"{marker.name} names {named.name}, which is {why}"
    elif marker.is_file():
        first = f"{marker.name} is empty or unreadable"
    else:
        first = f"no {marker.name}"
    aside: list[Path] = []
    if named is not None and named.is_file():
        aside.append(_set_aside(wd, named, discard))
    for c in cands:
        if not c.is_file():
            continue
        why = checkpoint_problem(c)
        if why is None:
            atomic_write_text(marker, str(c))
            where = f" ({gone})" if aside else ""
            return ResumePoint(
                c, aside, f"{first}{where}; resuming from the previous good checkpoint {c.name}"
            )
        aside.append(_set_aside(wd, c, discard))
    if marker.is_file():
        aside.append(_set_aside(wd, marker, discard))
    where = f" ({len(aside)} file(s) {gone})" if aside else ""
    return ResumePoint(None, aside, f"{first}{where}; no good checkpoint left: training starts over")


def resume_arg(
    work_dir: str | os.PathLike | None, resume: str | None, report: Callable[[str], None] | None = None
) -> str | None:
    """The ``--resume`` value of ``workflow.cli.train`` after the integrity check.

    ``auto`` (resume from the work dir's latest checkpoint) becomes the path of a checked checkpoint, or
    ``None`` (train from the start) when none is good; ``report`` gets the :class:`ResumePoint` note. Any other
    value, a missing work dir, and every DDP rank but 0 (rank 0 does the check) pass through unchanged.

    Args:
        work_dir: The ``--work-dir`` of the training (``None``: the config's, not checked).
        resume: The ``--resume`` value (``None``, ``"auto"`` or a path).
        report: Called with the note (e.g. ``print``).

    Returns:
        The ``--resume`` value to use.
    """
    if resume != "auto" or work_dir is None or not Path(work_dir).is_dir():
        return resume
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return resume
    point = resume_point(work_dir)
    if report is not None:
        report(point.note)
    return None if point.checkpoint is None else str(point.checkpoint)
