"""Compression of a trained mmseg segmentor: int8 post-training quantization (PTQ), quantization-aware
fine-tuning (QAT), structured channel pruning, and the size / speed / accuracy report of each.

Library paths (torch 2.13, see ``../shared/FACTS_KAGGLE_COMPRESSION_SEARCH.md``):

- PTQ: ``torch.export`` (dynamic batch, height, width) -> torchao ``prepare_pt2e`` with
  ``X86InductorQuantizer`` -> calibration on N training images -> ``convert_pt2e`` -> ``torch.compile``. The
  converted graph run without compiling is torch's *reference* int8 model (quantize / dequantize around fp32
  ops: the same numbers, slower than fp32); the compiled one runs int8 kernels.
- QAT: the same export -> ``prepare_qat_pt2e`` -> fine-tuning with the config's optimizer and loss on its
  training pipeline (any batch size: the batch dimension is dynamic) -> ``convert_pt2e``.
- Structured pruning: ``torch_pruning.MetaPruner`` (L1 channel importance, skip concatenations handled)
  removes a fraction of the channels of every layer but the classifier, then fine-tuning as above.

The exported function is the segmentor's tensor path (normalized image ``(N, 3, H, W)`` -> logits
``(N, C, H, W)``); metrics are computed on whole validation images after the config's data preprocessor
(1-channel heads: sigmoid > ``decode_head.threshold``; C-channel: argmax, foreground = not class 0).
"""

from __future__ import annotations

import copy
import io
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from torch import nn

from celldata.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from custom_modules.config import load_config
from ensemble.metrics import foreground_counts

METRIC_KEYS = ('accuracy', 'f1', 'jaccard', 'recall', 'precision')


class SegLogits(nn.Module):
    """Tensor path of an mmseg ``EncoderDecoder``: ``(N, 3, H, W)`` normalized images -> ``(N, C, H, W)`` logits."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.backbone = segmentor.backbone
        self.neck = getattr(segmentor, 'neck', None) if getattr(segmentor, 'with_neck', False) else None
        self.decode_head = segmentor.decode_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the decode head's output resolution (full resolution for :class:`PaperUNet`)."""
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        return self.decode_head.forward(feats)


@dataclass
class Sample:
    """One preprocessed image: ``inputs`` ``(1, 3, H, W)`` float, ``gt`` ``(H, W)`` int64 labels, ``img_id``."""

    inputs: torch.Tensor
    gt: torch.Tensor
    img_id: str


def build_segmentor(cfg: Config, checkpoint: str | Path | None = None) -> nn.Module:
    """Build ``cfg.model`` (BN instead of SyncBN on one process) and load ``checkpoint``; eval mode.

    The config's default scope (``mmseg``) becomes the current one, for the datasets and transforms built next.
    Read configs with :func:`custom_modules.config.load_config` (``data_root`` among its overrides).
    """
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    init_default_scope(cfg.get('default_scope', 'mmseg'))

    model = revert_sync_batchnorm(MODELS.build(copy.deepcopy(cfg.model)))
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
        load_checkpoint(model, str(checkpoint), map_location='cpu', logger='silent')
    return model.eval()


def load_samples(cfg: Config, model: nn.Module, split: str = 'val', limit: int | None = None) -> list[Sample]:
    """Whole images of the ``'val'`` or ``'train'`` split through the test pipeline and data preprocessor.

    Args:
        cfg: Config with ``val_dataloader`` (its pipeline is used for both splits) and ``train_dataloader``.
        model: Segmentor whose ``data_preprocessor`` normalizes the images.
        split: ``'val'`` or ``'train'`` (train images for calibration, read without augmentation).
        limit: Keep the first ``limit`` images of the split (None: all).
    """
    from mmseg.registry import DATASETS

    if split not in ('val', 'train'):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    ds_cfg = copy.deepcopy(cfg.val_dataloader.dataset)
    if split == 'train':
        train_ds = cfg.train_dataloader.dataset
        ds_cfg.ann_file = train_ds.ann_file
        ds_cfg.data_prefix = copy.deepcopy(train_ds.get('data_prefix', ds_cfg.get('data_prefix')))
    dataset = DATASETS.build(ds_cfg)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError(f'{split} split of the config has no image')
    samples = []
    with torch.no_grad():
        for i in range(n):
            data = model.data_preprocessor(pseudo_collate([dataset[i]]), training=False)
            ds = data['data_samples'][0]
            gt = ds.gt_sem_seg.data[0].long()
            inputs = data['inputs'][:, :, : gt.shape[0], : gt.shape[1]]
            samples.append(Sample(inputs=inputs, gt=gt, img_id=Path(ds.img_path).stem))
    return samples


def logits_to_mask(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Foreground mask ``(H, W)`` bool from logits ``(1, C, H, W)`` (C = 1: sigmoid > threshold; else argmax > 0)."""
    if logits.shape[1] == 1:
        return logits[0, 0].sigmoid() > threshold
    return logits[0].argmax(dim=0) > 0


def binary_metrics(pred: torch.Tensor, gt: torch.Tensor, ignore_index: int = 255) -> dict[str, float]:
    """Pixel accuracy, F1 (= Dice), Jaccard (= IoU), recall, precision of a foreground mask
    (:func:`ensemble.metrics.foreground_counts`).

    Args:
        pred: ``(H, W)`` bool prediction.
        gt: ``(H, W)`` labels (0 background, > 0 cell, ``ignore_index`` not counted).

    Empty prediction and empty truth score 1 on every ratio with a zero denominator.
    """
    valid = gt != ignore_index
    c = foreground_counts(pred.cpu().numpy(), ((gt > 0) & valid).cpu().numpy(), valid.cpu().numpy())
    return dict(accuracy=c.accuracy, f1=c.dice, jaccard=c.iou, recall=c.recall, precision=c.precision)


def predict(fn: Callable[[torch.Tensor], torch.Tensor], samples: Sequence[Sample]) -> list[torch.Tensor]:
    """Logits ``(1, C, H, W)`` of ``fn`` for every sample (no grad)."""
    with torch.no_grad():
        return [fn(s.inputs).detach().float() for s in samples]


def evaluate(
    logits: Sequence[torch.Tensor], samples: Sequence[Sample], threshold: float = 0.5
) -> dict[str, float]:
    """Per-image mean of :func:`binary_metrics` (the paper averages over test images)."""
    rows = [
        binary_metrics(logits_to_mask(lg, threshold), s.gt) for lg, s in zip(logits, samples, strict=True)
    ]
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS}


def fidelity(
    reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor], threshold: float = 0.5
) -> dict:
    """How closely ``other`` logits follow ``reference``: SQNR (dB), max |difference|, mask agreement."""
    ref = torch.cat([r.flatten() for r in reference])
    oth = torch.cat([o.flatten() for o in other])
    noise = (ref - oth).pow(2).mean()
    sqnr = float(10 * torch.log10(ref.pow(2).mean() / noise)) if noise > 0 else float('inf')
    agree = [
        float((logits_to_mask(r, threshold) == logits_to_mask(o, threshold)).float().mean())
        for r, o in zip(reference, other, strict=True)
    ]
    return dict(
        sqnr_db=sqnr, max_abs_diff=float((ref - oth).abs().max()), mask_agreement=float(np.mean(agree))
    )


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Parameter and non-zero counts over parameters and floating/integer buffers that hold weights."""
    tensors = dict(module.named_parameters())
    tensors.update({k: v for k, v in module.named_buffers() if 'running' not in k and 'num_batches' not in k})
    total = sum(t.numel() for t in tensors.values())
    nonzero = sum(int(torch.count_nonzero(t)) for t in tensors.values())
    return dict(params=total, nonzero=nonzero)


def strip_unused_attributes(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Delete parameters / buffers / submodules a converted graph no longer reads (fp32 originals).

    After ``convert_pt2e`` the graph reads int8 copies of the weights, but the fp32 parameters stay attached:
    a saved file would be larger than the float model's until they are removed.
    """
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == 'get_attr'}
    used_prefixes = set()
    for target in used:
        parts = target.split('.')
        used_prefixes.update('.'.join(parts[:i]) for i in range(1, len(parts) + 1))
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used_prefixes:
            owner_name, _, attr = name.rpartition('.')
            owner = gm.get_submodule(owner_name) if owner_name else gm
            if attr in owner._parameters:
                del owner._parameters[attr]
            elif attr in owner._buffers:
                del owner._buffers[attr]
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def saved_size(module: nn.Module, path: str | Path | None = None) -> int:
    """Bytes of the saved model: ``torch.export.save`` of ``module`` exported with dynamic batch and sides.

    The program is traced on a small zero input (the archive stores its example input) and accepts any batch
    and sides that are multiples of 16; it is written to ``path`` when given (load: ``torch.export.load``).
    """
    with torch.no_grad():
        ep = export_dynamic(module, torch.zeros(2, 3, 32, 32))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(Path(path), data)
    return len(data)


def state_dict_size(module: nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())`` (for modules that cannot be exported)."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return len(buf.getvalue())


def latency_ms(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 10, warmup: int = 2
) -> float:
    """Median wall time (ms) of ``fn(x)`` over ``repeats`` runs after ``warmup`` runs, no grad."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def export_dynamic(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` with dynamic batch and sides (sides multiples of 16 for the U-Net's pooling)."""
    from torch.export import Dim

    n, _, h, w = example.shape
    if h % 16 or w % 16:
        raise ValueError(f'example input sides must be multiples of 16 for export, got {(h, w)}')
    if n < 2:  # a size-1 dimension is specialized by export: trace with two copies
        example = example.repeat(2, 1, 1, 1)
    dims = {
        'x': {
            0: Dim('batch', min=1, max=1024),
            2: 16 * Dim('h16', min=1, max=512),
            3: 16 * Dim('w16', min=1, max=512),
        }
    }
    return torch.export.export(module, (example,), dynamic_shapes=dims)


UPSAMPLE_OPS = ('upsample_bilinear2d.vec', 'upsample_nearest2d.vec')


def _x86_quantizer(is_qat: bool, int8_upsample: bool = False):
    """``X86InductorQuantizer`` with the default static config; optionally also int8 around up-sampling.

    The stock recipe quantizes conv / linear and propagates int8 through max-pool and concat, but not through
    ``F.interpolate``: the conv before each decoder up-sampling then writes fp32, the up-sampling runs in fp32
    at the larger size and its output is quantized again. ``int8_upsample=True`` annotates up-sampling like
    max-pool (input quantized when it comes from a quantized op, output sharing the input's scale). Measured
    (``benchmarks/bench_int8_latency.py``, width 8, 528x704, 1 thread): compiled it is 2.3x SLOWER than the
    stock recipe (330 vs 143 ms; inductor's uint8 bilinear kernel is slow), so it is off by default and kept
    only to reproduce that result.
    """
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec, get_input_act_qspec

    config = xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat)

    class _Quantizer(xiq.X86InductorQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            super().annotate(model)
            if not int8_upsample:
                return model
            targets = {getattr(torch.ops.aten, n.split('.')[0]).vec for n in UPSAMPLE_OPS}
            for node in model.graph.nodes:
                if node.op != 'call_function' or node.target not in targets or xiq._is_any_annotated([node]):
                    continue
                src = node.args[0]
                if not isinstance(src, torch.fx.Node) or not xiq._is_quantized_op_pt2e(src):
                    continue
                node.meta[xiq.QUANT_ANNOTATION_KEY] = xiq._X86InductorQuantizationAnnotation(
                    input_qspec_map={src: get_input_act_qspec(config)},
                    output_qspec=SharedQuantizationSpec((src, node)),
                    _annotated=True,
                    _is_output_of_quantized_pattern=True,
                )
            return model

    quantizer = _Quantizer()
    quantizer.set_global(config)
    return quantizer


def ptq_pt2e(
    float_module: nn.Module, calib_inputs: Sequence[torch.Tensor], int8_upsample: bool = False
) -> torch.fx.GraphModule:
    """Static int8 PTQ (per-channel weights, per-tensor uint8 activations) calibrated on ``calib_inputs``.

    ``int8_upsample``: also keep decoder up-sampling in int8 (see :func:`_x86_quantizer`). Returns the
    converted reference graph (call :func:`compile_module` for int8 kernels).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calib_inputs:
        raise ValueError('PTQ needs at least one calibration image')
    example = _pad16(calib_inputs[0])
    gm = export_dynamic(float_module.eval(), example).module()
    prepared = prepare_pt2e(gm, _x86_quantizer(is_qat=False, int8_upsample=int8_upsample))
    with torch.no_grad():
        for x in calib_inputs:
            prepared(_pad16(x))
    return strip_unused_attributes(convert_pt2e(prepared))


def train_batches(cfg: Config, seed: int = 0) -> Iterator[tuple[torch.Tensor, list]]:
    """Endless ``(inputs, data_samples)`` batches of the config's training dataloader (raw, not preprocessed)."""
    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg['num_workers'] = 0
    loader_cfg['persistent_workers'] = False
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    while True:
        yield from loader


def finetune(
    module: nn.Module,
    segmentor: nn.Module,
    cfg: Config,
    iters: int,
    lr: float | None = None,
    seed: int = 0,
    on_iter: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Fine-tune ``module`` (a :class:`SegLogits` or an exported graph of it) for ``iters`` iterations.

    Batches come from the config's training dataloader through ``segmentor.data_preprocessor``; the loss is
    ``segmentor.decode_head.loss_by_feat`` (the config's ``loss_decode``); the optimizer is built from
    ``cfg.optim_wrapper`` (``lr`` replaces its learning rate; no scheduler).

    Returns:
        Loss of every iteration.
    """
    from mmengine.optim import build_optim_wrapper

    if iters < 1:
        raise ValueError(f'iters must be >= 1, got {iters}')
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    if lr is not None:
        optim_cfg.optimizer.lr = lr
    wrapper = build_optim_wrapper(module, optim_cfg)
    head = segmentor.decode_head
    batches = train_batches(cfg, seed=seed)
    losses = []
    for it in range(iters):
        data = segmentor.data_preprocessor(next(batches), training=True)
        logits = module(data['inputs'])
        parts = head.loss_by_feat(logits, data['data_samples'])
        loss = sum(v for k, v in parts.items() if k.startswith('loss'))
        wrapper.update_params(loss)
        losses.append(float(loss.detach()))
        if on_iter is not None:
            on_iter(it, losses[-1])
    return losses


def qat_pt2e(
    float_module: nn.Module,
    segmentor: nn.Module,
    cfg: Config,
    example: torch.Tensor,
    iters: int,
    lr: float | None = None,
    seed: int = 0,
    on_iter: Callable[[int, float], None] | None = None,
    int8_upsample: bool = False,
) -> tuple[torch.fx.GraphModule, list[float]]:
    """Quantization-aware fine-tuning from the float weights, then conversion to the int8 reference graph.

    The graph is exported in eval mode with dynamic batch / sides, prepared with ``prepare_qat_pt2e``
    (conv-BN folded with fake quantization), switched to training behaviour (batch-norm statistics update)
    by ``move_exported_model_to_train`` and fine-tuned; ``move_exported_model_to_eval`` + ``convert_pt2e``.
    ``int8_upsample``: as in :func:`ptq_pt2e`.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    gm = export_dynamic(copy.deepcopy(float_module).eval(), _pad16(example)).module()
    prepared = prepare_qat_pt2e(gm, _x86_quantizer(is_qat=True, int8_upsample=int8_upsample))
    move_exported_model_to_train(prepared)
    losses = finetune(prepared, segmentor, cfg, iters, lr=lr, seed=seed, on_iter=on_iter)
    move_exported_model_to_eval(prepared)
    return strip_unused_attributes(convert_pt2e(prepared)), losses


def prune_channels(float_module: SegLogits, example: torch.Tensor, ratio: float) -> SegLogits:
    """Remove ``ratio`` of the channels of every conv but the classifier (L1 importance, torch-pruning).

    Concatenated skip connections are pruned consistently (torch-pruning's dependency graph). Returns a
    pruned deep copy.
    """
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise ValueError(f'ratio must be in (0, 1), got {ratio}')
    module = copy.deepcopy(float_module).eval()
    ignored = [
        m
        for m in module.decode_head.modules()
        if isinstance(m, nn.Conv2d) and m.out_channels == module.decode_head.out_channels
    ]
    pruner = tp.pruner.MetaPruner(
        module,
        _pad16(example),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    pruner.step()
    return module


def compile_module(
    module: nn.Module, quantized: bool, freezing: bool | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` (inductor) of ``module``.

    Args:
        module: Float module or converted PT2E int8 graph.
        quantized: ``module`` is an int8 PT2E graph: always compiled with inductor weight freezing, which the
            int8 lowering (dequantize-conv-quantize -> oneDNN ``qconv``) needs.
        freezing: Inductor ``freezing`` for a float module (weights constant-folded and prepacked for
            oneDNN; None: inductor's default, off). Passed per compile, not as a process-wide setting.
    """
    import torch._inductor.config as inductor_config

    freeze = True if quantized else bool(freezing)
    compiled = torch.compile(module)

    def run(x: torch.Tensor) -> torch.Tensor:
        # inductor compiles lazily (first call, recompiles): the setting must hold during the call.
        # (``torch.compile(options={'freezing': True})`` is not equivalent: the int8 weight prepacking then
        # runs under fake tensors and fails on ``onednn.qconv_prepack``.)
        with inductor_config.patch(freezing=freeze):
            return compiled(x)

    return run


def _pad16(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    return torch.nn.functional.pad(x, (0, pw, 0, ph)) if ph or pw else x


def padded_fn(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Run ``fn`` on the input zero-padded to multiples of 16 and crop the logits back."""

    def run(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return fn(_pad16(x))[..., :h, :w]

    return run


def variant_report(
    name: str,
    fn: Callable[[torch.Tensor], torch.Tensor],
    module_for_size: nn.Module,
    samples: Sequence[Sample],
    example: torch.Tensor,
    threshold: float,
    latency: dict[str, float],
    save_path: str | Path | None = None,
    exportable: bool = True,
) -> dict:
    """Metrics, size, counts and latencies of one model variant."""
    logits = predict(padded_fn(fn), samples)
    size = saved_size(module_for_size, save_path) if exportable else state_dict_size(module_for_size)
    return dict(
        name=name,
        metrics=evaluate(logits, samples, threshold),
        size_bytes=size,
        **count_parameters(module_for_size),
        latency_ms=latency,
        _logits=logits,
    )


def write_report(report: dict, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` (table) and ``<stem>.png`` (metrics, size, latency) atomically."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variants = report['variants']
    clean = {
        **report,
        'variants': [{k: v for k, v in var.items() if not k.startswith('_')} for var in variants],
    }
    paths = dict(json=out / f'{stem}.json', md=out / f'{stem}.md', png=out / f'{stem}.png')
    atomic_write_json(paths['json'], clean)
    lat_keys = sorted({k for v in variants for k in v['latency_ms']})
    head = ['model', *METRIC_KEYS, 'size (MB)', 'params', 'non-zero', *[f'{k} (ms)' for k in lat_keys]]
    lines = [
        f"# {report['command']}: {report['config']}",
        '',
        f"Validation images: {report['n_val_images']}; threads: {report['threads']}; latency input "
        f"{tuple(report['latency_input'])}, median of {report['repeats']} runs.",
        '',
        '| ' + ' | '.join(head) + ' |',
        '|' + '---|' * len(head),
    ]
    for v in clean['variants']:
        row = [v['name'], *[f"{v['metrics'][k]:.4f}" for k in METRIC_KEYS], f"{v['size_bytes'] / 1e6:.3f}"]
        row += [str(v['params']), str(v['nonzero'])]
        row += [f"{v['latency_ms'][k]:.1f}" if k in v['latency_ms'] else '-' for k in lat_keys]
        lines.append('| ' + ' | '.join(row) + ' |')
    if report.get('fidelity'):
        lines += ['', f"Fidelity to the float model's logits: {json.dumps(report['fidelity'])}"]
    for note in report.get('notes', []):
        lines += ['', note]
    atomic_write_text(paths['md'], '\n'.join(lines) + '\n')

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = [v['name'] for v in variants]
    x = np.arange(len(METRIC_KEYS))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        axes[0].bar(x + i * width, [v['metrics'][k] for k in METRIC_KEYS], width, label=v['name'])
    axes[0].set_xticks(x + width * (len(variants) - 1) / 2, METRIC_KEYS)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"validation ({report['n_val_images']} images)")
    axes[1].bar(names, [v['size_bytes'] / 1e6 for v in variants])
    axes[1].set_title('saved size (MB)')
    for i, k in enumerate(lat_keys):
        axes[2].bar(
            np.arange(len(names)) + i * 0.8 / len(lat_keys),
            [v['latency_ms'].get(k, 0.0) for v in variants],
            0.8 / len(lat_keys),
            label=k,
        )
    axes[2].set_xticks(np.arange(len(names)), names)
    axes[2].legend(fontsize=7)
    axes[2].set_title(f"CPU latency (ms, {report['threads']} thread(s))")
    for ax in axes[1:]:
        ax.tick_params(axis='x', labelrotation=20)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=110)
    plt.close(fig)
    atomic_write_bytes(paths['png'], buf.getvalue())
    return paths


@dataclass
class _Setup:
    """What every compression command works on: the float model, its images and the timing settings."""

    cfg: Config
    segmentor: nn.Module
    float_module: SegLogits
    threshold: float
    val: list[Sample]
    calib: list[torch.Tensor]
    example: torch.Tensor
    timed: torch.Tensor
    out_dir: Path
    repeats: int
    compile_models: bool
    log: Callable[[str], None]

    def timings(self, module: nn.Module, quantized: bool, eager: bool = True) -> dict[str, float]:
        """Median latencies (ms) of ``module``: eager and/or compiled (``torch.compile``, when enabled)."""
        res = {}
        if eager:
            res['eager'] = latency_ms(module, self.timed, self.repeats)
        if self.compile_models:
            self.log(f'compiling {"int8" if quantized else "float"} model (inductor) ...')
            compiled = compile_module(module, quantized)
            res['compiled'] = latency_ms(compiled, self.timed, self.repeats)
        return res

    def report(
        self, name: str, module: nn.Module, latency: dict[str, float], save: str | None = None
    ) -> dict:
        """:func:`variant_report` of ``module`` on the validation images (saved to ``out_dir / save``)."""
        path = None if save is None else self.out_dir / save
        return variant_report(name, module, module, self.val, self.example, self.threshold, latency, path)


def _setup(
    config: str | Path,
    checkpoint: str | Path,
    work_dir: str | Path,
    data_root: str | None,
    cfg_options: dict | None,
    calib_images: int,
    repeats: int,
    latency_size: tuple[int, int] | None,
    compile_models: bool,
    log: Callable[[str], None],
) -> _Setup:
    """Config (:func:`custom_modules.config.load_config`), float model, validation and calibration images."""
    opts = dict(cfg_options or {})
    if data_root is not None:
        opts['data_root'] = data_root
    cfg = load_config(config, opts)
    segmentor = build_segmentor(cfg, checkpoint)
    val = load_samples(cfg, segmentor, 'val')
    example = _pad16(val[0].inputs)
    return _Setup(
        cfg=cfg,
        segmentor=segmentor,
        float_module=SegLogits(segmentor).eval(),
        threshold=float(getattr(segmentor.decode_head, 'threshold', None) or 0.5),
        val=val,
        calib=[s.inputs for s in load_samples(cfg, segmentor, 'train', calib_images)],
        example=example,
        timed=example if latency_size is None else torch.randn(1, 3, *latency_size),
        out_dir=Path(work_dir),
        repeats=repeats,
        compile_models=compile_models,
        log=log,
    )


def _ptq_variants(su: _Setup) -> tuple[list[dict], list[str]]:
    """The PT2E int8 PTQ variant and its note."""
    su.log(f'PTQ: calibrating on {len(su.calib)} training images')
    q = ptq_pt2e(su.float_module, su.calib)
    qv = su.report('int8-ptq', q, su.timings(q, True, eager=False), 'int8_ptq.pt2')
    note = (
        'Metrics of the int8 model come from the converted PT2E graph run as torch reference int8 '
        '(quantize/dequantize around fp32 ops); its compiled form runs int8 kernels.'
    )
    return [qv], [note]


def _qat_variants(su: _Setup, iters: int, lr: float | None, seed: int) -> list[dict]:
    """The int8 QAT variant (with its training losses)."""
    su.log(f'QAT: {iters} iterations')
    q, losses = qat_pt2e(
        su.float_module,
        su.segmentor,
        su.cfg,
        su.example,
        iters,
        lr,
        seed,
        on_iter=lambda i, v: su.log(f'qat iter {i + 1}/{iters} loss {v:.4f}') if (i + 1) % 20 == 0 else None,
    )
    qv = su.report('int8-qat', q, su.timings(q, True, eager=False), 'int8_qat.pt2')
    qv['train_losses'] = losses
    return [qv]


def _prune_variants(su: _Setup, ratio: float, iters: int, lr: float | None, seed: int) -> list[dict]:
    """The pruned model before and after fine-tuning (the latter with its training losses)."""
    su.log(f'structured pruning: {ratio:.0%} of the channels, then {iters} iterations of fine-tuning')
    pruned = prune_channels(su.float_module, su.example, ratio)
    before = su.report(f'pruned-{ratio:.0%}-no-ft', pruned, {})
    pruned.train()
    losses = finetune(pruned, su.segmentor, su.cfg, iters, lr, seed)
    pruned.eval()
    pv = su.report(f'pruned-{ratio:.0%}', pruned, su.timings(pruned, False), 'pruned.pt2')
    pv['train_losses'] = losses
    return [before, pv]


def run_compression(
    command: str,
    config: str | Path,
    checkpoint: str | Path,
    work_dir: str | Path,
    data_root: str | None = None,
    cfg_options: dict | None = None,
    calib_images: int = 8,
    iters: int = 100,
    lr: float | None = None,
    ratio: float = 0.5,
    threads: int = 1,
    repeats: int = 10,
    latency_size: tuple[int, int] | None = None,
    compile_models: bool = True,
    seed: int = 0,
    logger: Callable[[str], None] | None = None,
) -> dict:
    """Run one compression command and write its report; returns the report (without logits).

    Args:
        command: ``'ptq'``, ``'qat'`` or ``'prune-structured'``.
        config: mmseg config of the trained model.
        checkpoint: Float checkpoint.
        work_dir: Output folder (report files, saved models ``*.pt2``).
        data_root: Replaces the datasets' data root.
        cfg_options: Config overrides.
        calib_images: Training images used to calibrate PTQ (and QAT's initial observers).
        iters: Fine-tuning iterations of QAT / after pruning.
        lr: Fine-tuning learning rate (None: the config's).
        ratio: Channel fraction removed by ``prune-structured``.
        threads: ``torch.set_num_threads`` for every latency measurement.
        repeats: Timed runs per latency (median reported).
        latency_size: ``(H, W)`` of the timed input (None: the first validation image, padded to 16).
        compile_models: Also time ``torch.compile`` versions (int8 needs it to be fast).
        seed: Seed of the fine-tuning data order.
        logger: Progress callback (e.g. ``print`` or an mmengine logger's ``info``).

    Raises:
        ValueError: unknown command, bad config or data; FileNotFoundError: missing config or checkpoint.
    """
    log = logger or (lambda _msg: None)
    if command not in ('ptq', 'qat', 'prune-structured'):
        raise ValueError(f"command must be 'ptq', 'qat' or 'prune-structured', got {command!r}")
    torch.manual_seed(seed)
    su = _setup(
        config,
        checkpoint,
        work_dir,
        data_root,
        cfg_options,
        calib_images,
        repeats,
        latency_size,
        compile_models,
        log,
    )
    torch.set_num_threads(threads)
    log(f'float model: {len(su.val)} validation images')
    base = su.report('float', su.float_module, su.timings(su.float_module, False), 'float.pt2')
    notes: list[str] = []
    if command == 'ptq':
        extra, notes = _ptq_variants(su)
    elif command == 'qat':
        extra = _qat_variants(su, iters, lr, seed)
    else:
        extra = _prune_variants(su, ratio, iters, lr, seed)
    variants = [base, *extra]
    report = dict(
        command=command,
        config=str(config),
        checkpoint=str(checkpoint),
        n_val_images=len(su.val),
        n_calib_images=len(su.calib),
        iters=iters if command != 'ptq' else 0,
        threads=threads,
        repeats=repeats,
        latency_input=list(su.timed.shape),
        variants=variants,
        fidelity=fidelity(base['_logits'], variants[-1]['_logits'], su.threshold),
        notes=notes,
    )
    write_report(report, su.out_dir, command.replace('-', '_'))
    report['variants'] = [{k: v for k, v in var.items() if not k.startswith('_')} for var in variants]
    return report
