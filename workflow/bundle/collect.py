"""Which models a bundle needs: the networks behind each prediction file of a tuned ensemble, read from the
provenance that ``python -m workflow.cli.infer`` and ``python -m ensemble.fuse_boxes`` record in their files.

A prediction file that merges fold models (``folds_merged`` in its meta, as the recipe's test predictions) gives a
model with one network per fold; a file predicted with ``--mask-head-on`` brings its box provider (per fold when
the folds were chained fold by fold; once when every fold's mask head ran on one shared file, as the recipe's
box-first test boxes): another model, or the fused boxes of a box-first ensemble with the box models they were
fused from. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from workflow.bundle.format import BundleError, FoldSource, FusedBoxesSource, ModelSource, safe_name

__all__ = ["collect_models"]

Source = ModelSource | FusedBoxesSource
_MAX_DEPTH = 8


def _read_meta(pred_file: Path, who: str) -> dict:
    from ensemble.predictions import load_predictions

    if not pred_file.is_file():
        raise BundleError(f"model '{who}': prediction file {pred_file} not found")
    _, meta = load_predictions(pred_file)
    return meta


def _role(library: str, has_masks: bool, mask_head_on: object) -> str:
    if library == "mmseg":
        return "semantic"
    if mask_head_on:
        return "mask_head"
    return "instance" if has_masks else "boxes"


def _library_of_config(config: str) -> str:
    from custom_modules.config import library_of, load_config

    return library_of(load_config(config, import_custom_modules=False))


def collect_models(
    ensemble_yaml: str | os.PathLike,
    models: Mapping[str, tuple[str, str]] | None = None,
) -> list[ModelSource | FusedBoxesSource]:
    """The models a bundle of ``ensemble_yaml`` needs, in the order the notebook must run them.

    Args:
        ensemble_yaml: A (tuned) ensemble config (:mod:`ensemble.config`).
        models: Optional ``name -> (config, checkpoint)`` overriding what the prediction file of a single-network
            ensemble model records.

    Returns:
        Every model, box providers before the models that predict masks on their boxes.

    Raises:
        BundleError: A model without a config or checkpoint (recorded or given), a missing file, an unknown
            name in ``models``, an override of a fold-merged model, a ``--mask-head-on`` source that is not one
            model's prediction file nor fused boxes, or a chain that loops.
    """
    from ensemble.config import load_config

    ens = load_config(ensemble_yaml)
    overrides = dict(models or {})
    unknown = sorted(set(overrides) - {m.name for m in ens.models})
    if unknown:
        raise BundleError(
            f"--model names {unknown} are not models of {ensemble_yaml} ({[m.name for m in ens.models]})"
        )
    collector = _Collector(overrides)
    for m in ens.models:
        collector.add_member(m.name, Path(m.predictions))
    for m in ens.models:  # the YAML is rewritten with the bundle names
        if collector.by_file[Path(m.predictions).resolve()][0].name != m.name:
            raise BundleError(
                f"ensemble model name {m.name!r} is not file-system safe or repeats another; rename it in "
                f"{ensemble_yaml} (letters, digits, '_', '.', '-')"
            )
    return collector.out


class _Collector:
    """The walk of :func:`collect_models`: every source once, box providers first.

    Attributes:
        overrides: ``name -> (config, checkpoint)`` given by the user.
        out: The sources in run order.
        by_file: Resolved prediction file -> (its source, fold index or None for a merged file).
        taken: Bundle names in use.
    """

    def __init__(self, overrides: Mapping[str, tuple[str, str]]) -> None:
        self.overrides = dict(overrides)
        self.out: list[Source] = []
        self.by_file: dict[Path, tuple[Source, int | None]] = {}
        self.taken: set[str] = set()

    def _register(self, src: Source, files: list[Path], ens_file: Path | None, append: bool = True) -> None:
        """Claim ``src``'s name and files (fold k: ``files[k]``; the ensemble's file: all of them)."""
        self.taken.add(src.name)
        for k, f in enumerate(files):
            self.by_file[f.resolve()] = (src, k)
        if ens_file is not None:
            self.by_file[ens_file.resolve()] = (src, None if len(files) > 1 else 0)
        if append:
            self.out.append(src)

    def add_member(self, name: str, pred: Path) -> None:
        """One model of the ensemble YAML (it may already be in as another model's box provider)."""
        hit = self.by_file.get(pred.resolve())
        if hit is not None:
            hit[0].in_ensemble, hit[0].predictions = True, str(pred)
            return
        meta = _read_meta(pred, name)
        if not meta.get("fused_boxes"):
            self.add_model(name, [pred], pred, True, 0)
            return
        fused = self.add_fused([pred], pred, name, 0)
        if fused.name != name:  # the ensemble's own name for the fused file
            self.taken.discard(fused.name)
            fused.name = safe_name(name, self.taken)
            self.taken.add(fused.name)

    def provider_of(self, paths: list[Path], who: str, depth: int) -> tuple[Source, list[int | None]]:
        """The box provider of a mask model whose fold k ran on ``paths[k]``, and the provider's fold per fold."""
        if len(paths) > 1 and len({p.resolve() for p in paths}) == 1:
            # every fold's mask head ran on one shared file: the provider runs once
            src, (i,) = self.provider_of(paths[:1], who, depth)
            return src, [i] * len(paths)
        hits = [self.by_file.get(p.resolve()) for p in paths]
        if all(hits) and len({id(h[0]) for h in hits}) == 1:
            return hits[0][0], [h[1] for h in hits]
        if any(hits):
            raise BundleError(f"model '{who}': its folds predicted masks on boxes of different models")
        meta = _read_meta(paths[0], who)
        if meta.get("fused_boxes"):
            src: Source = self.add_fused(paths, None, who, depth + 1)
        elif not meta.get("config") or not meta.get("library"):
            raise BundleError(
                f"model '{who}': masks were predicted on {paths[0]}, which is neither one model's prediction "
                "file nor fused boxes of python -m ensemble.fuse_boxes"
            )
        else:
            src = self.add_model(str(meta.get("name") or paths[0].stem), paths, None, False, depth + 1)
        return src, [self.by_file[p.resolve()][1] for p in paths]

    def add_fused(self, paths: list[Path], ens_file: Path | None, who: str, depth: int) -> FusedBoxesSource:
        """Fused boxes (one file per fold) and the box models they were fused from (fold k from file k)."""
        metas = [_read_meta(p, who) for p in paths]
        lists = [m.get("models") for m in metas]
        if not all(isinstance(x, list) and x for x in lists):
            raise BundleError(
                f"{paths[0]}: fused boxes without the list of their box models ('models' in meta)"
            )
        names = [str(b.get("name")) for b in lists[0]]
        if any([str(b.get("name")) for b in x] != names for x in lists):
            raise BundleError(
                f"fused box files {[str(p) for p in paths]} were fused from different box models"
            )
        boxes = []
        for j, bname in enumerate(names):
            files = [Path(x[j]["predictions"]) for x in lists]
            box_src = self._box_model(bname, files, depth)
            boxes.append((box_src.name, float(lists[0][j].get("weight", 1.0))))
        fused = FusedBoxesSource(
            name=safe_name(str(metas[0].get("name") or "fused_boxes"), self.taken),
            boxes=boxes,
            fusion=dict(metas[0].get("fusion") or {}),
            n_folds=len(paths),
            in_ensemble=ens_file is not None,
            predictions=None if ens_file is None else str(ens_file),
        )
        self._register(fused, paths, ens_file)
        return fused

    def _box_model(self, bname: str, files: list[Path], depth: int) -> Source:
        """The box model that wrote ``files`` (fold k: ``files[k]``), added when not yet in."""
        hits = [self.by_file.get(f.resolve()) for f in files]
        if (
            all(hits)
            and len({id(h[0]) for h in hits}) == 1
            and [h[1] for h in hits] == list(range(len(files)))
        ):
            return hits[0][0]
        box_src = self.add_model(bname, files, None, False, depth + 1)
        if len(files) > 1 and len(box_src.folds) != len(files):
            raise BundleError(f"box model '{bname}' of {files[0]}: one file per fold expected")
        return box_src

    def _folds(self, name: str, files: list[Path], metas: list[dict]) -> list[FoldSource]:
        """The networks behind ``files``: recorded (or overridden) config and checkpoint, both present."""
        folds = []
        for f, meta in zip(files, metas):
            config, checkpoint = self.overrides.get(name, (meta.get("config"), meta.get("checkpoint")))
            where = f"model '{name}' (prediction file {f})"
            if not config:
                raise BundleError(
                    f"{where}: no config recorded; give one with --model {name} CONFIG CHECKPOINT"
                )
            if not checkpoint:
                raise BundleError(
                    f"{where}: no checkpoint recorded (predicted with random weights?); give one with "
                    f"--model {name} CONFIG CHECKPOINT"
                )
            if not Path(config).is_file():
                raise BundleError(f"{where}: config {config} not found")
            if not Path(checkpoint).is_file():
                raise BundleError(f"{where}: checkpoint {checkpoint} not found")
            folds.append(FoldSource(str(config), str(checkpoint), str(f)))
        return folds

    def add_model(
        self, name: str, files: list[Path], ens_file: Path | None, in_ensemble: bool, depth: int
    ) -> ModelSource:
        """A model of one network per file (a file merging fold models: one per merged file), then its box
        provider when it predicted masks on given boxes."""
        if depth > _MAX_DEPTH:
            raise BundleError(
                f"model '{name}': --mask-head-on chain longer than {_MAX_DEPTH} files (a loop?)"
            )
        metas = [_read_meta(f, name) for f in files]
        if len(files) == 1 and metas[0].get("folds_merged"):
            files = [Path(p) for p in metas[0]["folds_merged"]]
            metas = [_read_meta(f, name) for f in files]
        if name in self.overrides and len(files) > 1:
            raise BundleError(
                f"--model {name}: the ensemble's file merges {len(files)} fold models ({[str(f) for f in files]}); "
                "their configs and checkpoints are taken from those files"
            )
        folds = self._folds(name, files, metas)
        m0 = metas[0]
        library = m0.get("library") or _library_of_config(folds[0].config)
        if library not in ("mmdet", "mmseg"):
            raise BundleError(f"model '{name}': library {library!r} cannot be bundled (mmdet or mmseg)")
        heads = [meta.get("mask_head_on") for meta in metas]
        if any(heads) and not all(heads):
            raise BundleError(f"model '{name}': some folds predicted masks on given boxes, others not")
        src = ModelSource(
            name=safe_name(name, self.taken),
            library=library,
            role=_role(library, bool(m0.get("has_masks")), heads[0]),
            folds=folds,
            in_ensemble=in_ensemble,
            tta=bool(m0.get("tta", False)),
            score_thr=float(m0.get("score_thr", 0.05)),
            max_per_img=int(m0.get("max_per_img", 1000)),
            predictions=None if ens_file is None else str(ens_file),
        )
        self._register(src, files, ens_file, append=False)  # after its box provider
        if heads[0]:
            provider, idx = self.provider_of([Path(h) for h in heads], src.name, depth)
            src.masks_from = provider.name
            for fold, i in zip(folds, idx):
                fold.masks_from_fold = i
        self.out.append(src)
        return src
