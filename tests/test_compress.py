"""PaperUNet, MagnitudePruningHook and the compression paths (PT2E int8 PTQ / QAT, structured pruning)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub

import custom_modules.seg  # noqa: F401  (registers the modules)
from custom_modules.config import load_config
from custom_modules.seg import compress as cp
from custom_modules.seg.pruning import MagnitudePruningHook, prunable_layers, weight_sparsity
from custom_modules.seg.unet_paper import PaperUNet

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
REAL = SHARED / 'data' / 'sartorius_real_train'
CONFIG = REPO / 'configs' / 'unet_study' / 'unet-s5-c64_bce-adam_1xb8-8k_sartorius-cell-256x256.py'
needs_real = pytest.mark.skipif(
    not (REAL / 'train.csv').is_file(), reason=f'{REAL} (../shared) not available'
)


def tiny_options(channels: int = 4, crop: int = 64, batch: int = 3) -> dict:
    return {
        'model.backbone.base_channels': channels,
        'model.decode_head.in_channels': channels,
        'model.decode_head.channels': channels,
        'model.data_preprocessor.size': (crop, crop),
        'train_dataloader.batch_size': batch,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'val_dataloader.num_workers': 0,
        'val_dataloader.persistent_workers': False,
        'train_dataloader.dataset.pipeline': [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(type='RandomCrop', crop_size=(crop, crop)),
            dict(type='PackSegInputs'),
        ],
    }


@pytest.mark.parametrize('decoder', ['upsample', 'deconv'])
@pytest.mark.parametrize('size', [(32, 48), (37, 50)])
def test_paper_unet_shapes(decoder, size):
    net = PaperUNet(base_channels=4, num_stages=5, decoder=decoder).eval()
    outs = net(torch.randn(2, 3, *size))
    assert len(outs) == 5
    assert outs[-1].shape == (2, 4, *size)
    assert outs[0].shape[1] == 64
    assert tuple(net.out_channels) == (64, 32, 16, 8, 4)
    kinds = {type(m).__name__ for m in net.modules()}
    assert ('ConvTranspose2d' in kinds) == (decoder == 'deconv')
    assert 'BatchNorm2d' in kinds and 'ReLU' in kinds
    with pytest.raises(ValueError, match='decoder'):
        PaperUNet(decoder='pixelshuffle')


def fake_runner(model: torch.nn.Module, max_iters: int):
    hub = MessageHub.get_instance('test_compress_pruning')
    return SimpleNamespace(
        model=model, max_iters=max_iters, iter=0, message_hub=hub, logger=logging.getLogger('t')
    )


def test_pruning_hook_schedule_and_checkpoint():
    torch.manual_seed(0)
    net = torch.nn.Sequential(PaperUNet(base_channels=4, num_stages=3))
    hook = MagnitudePruningHook(start=0.5, end=0.9, interval=10, stop=30)
    runner = fake_runner(net, max_iters=40)
    layers = prunable_layers(net)
    n = sum(m.weight.numel() for _, m in layers)
    hook.before_train(runner)
    assert weight_sparsity(layers) == pytest.approx(round(0.5 * n) / n, abs=1e-12)
    expected = {10: 0.9 - 0.4 * (2 / 3) ** 3, 20: 0.9 - 0.4 * (1 / 3) ** 3, 30: 0.9}
    for it in range(40):
        with torch.no_grad():  # a training step changes the unmasked weights
            for _, m in layers:
                m.weight_orig.add_(0.01 * torch.randn_like(m.weight_orig))
        runner.iter = it
        before = weight_sparsity(layers)
        hook.after_train_iter(runner, it)
        done = it + 1
        if done in expected:
            assert weight_sparsity(layers) == pytest.approx(round(expected[done] * n) / n, abs=1e-12)
        else:
            assert weight_sparsity(layers) == before
    assert [it for it, _ in hook.schedule] == [0, 10, 20, 30]
    assert runner.message_hub.get_scalar('train/sparsity').current() == pytest.approx(0.9)
    ckpt = {'state_dict': net.state_dict()}
    hook.before_save_checkpoint(runner, ckpt)
    assert not any(k.endswith(('_orig', '_mask')) for k in ckpt['state_dict'])
    hook.after_train(runner)
    keys = set(net.state_dict())
    assert not any(k.endswith(('_orig', '_mask')) for k in keys)
    assert keys == set(ckpt['state_dict'])
    assert weight_sparsity(layers) == pytest.approx(round(0.9 * n) / n, abs=1e-12)
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_ptq_fast_random_small_unet(tmp_path):
    """Fast check of the PT2E path: int8 graph runs at other shapes, is smaller, follows the float model."""
    torch.manual_seed(0)
    cfg = load_config(CONFIG, tiny_options(channels=4))
    fmod = cp.SegLogits(cp.build_segmentor(cfg)).eval()
    calib = [torch.randn(1, 3, 32, 32) for _ in range(3)]
    q = cp.ptq_pt2e(fmod, calib)
    x = torch.randn(3, 3, 48, 32)
    with torch.no_grad():
        ref, out = fmod(x), q(x)
    assert out.shape == ref.shape == (3, 1, 48, 32)
    fid = cp.fidelity([ref], [out])
    assert 0.0 < fid['max_abs_diff'] and fid['sqnr_db'] >= 15.0, fid
    assert cp.count_parameters(q)['params'] >= cp.count_parameters(fmod)['params'] * 0.99  # int8 copies kept
    assert not any(p.dtype == torch.float32 and p.dim() == 4 for p in q.parameters())  # fp32 originals gone


def _upsample_neighbours(gm: torch.fx.GraphModule) -> list[tuple[str, list[str]]]:
    return [
        (str(n.args[0].target), [str(u.target) for u in n.users])
        for n in gm.graph.nodes
        if n.op == 'call_function' and 'upsample_bilinear2d' in str(n.target)
    ]


def test_ptq_int8_upsample_option_moves_upsampling_between_dequantize_and_quantize():
    """Stock recipe: fp32 up-sampling fed by the conv's fp32 output; the option: uint8 in, shared scale out."""
    torch.manual_seed(0)
    cfg = load_config(CONFIG, tiny_options(channels=4))
    fmod = cp.SegLogits(cp.build_segmentor(cfg)).eval()
    calib = [torch.randn(1, 3, 32, 32) for _ in range(2)]
    stock = _upsample_neighbours(cp.ptq_pt2e(fmod, calib))
    q8 = cp.ptq_pt2e(fmod, calib, int8_upsample=True)
    up8 = _upsample_neighbours(q8)
    assert len(stock) == len(up8) == 4
    assert all(not src.startswith('quantized_decomposed.dequantize') for src, _ in stock)
    assert all(src.startswith('quantized_decomposed.dequantize_per_tensor') for src, _ in up8)
    for n in q8.graph.nodes:  # output re-quantized with the input's scale / zero point
        if 'upsample_bilinear2d' in str(n.target):
            (user,) = n.users
            assert 'quantize_per_tensor' in str(user.target)
            assert tuple(user.args[1:3]) == tuple(n.args[0].args[1:3])
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        assert cp.fidelity([fmod(x)], [q8(x)])['sqnr_db'] >= 15.0


def test_binary_metrics_by_hand():
    pred = torch.tensor([[True, True, False, False]])
    gt = torch.tensor([[1, 0, 1, 255]])
    m = cp.binary_metrics(pred, gt)
    # tp 1, fp 1, fn 1, tn 0 over 3 valid pixels
    assert m == pytest.approx(dict(accuracy=1 / 3, f1=0.5, jaccard=1 / 3, recall=0.5, precision=0.5))


def test_structured_pruning_removes_half_the_channels():
    cfg = load_config(CONFIG, tiny_options(channels=4))
    seg = cp.build_segmentor(cfg)
    fmod = cp.SegLogits(seg).eval()
    x = torch.randn(1, 3, 32, 48)
    pruned = cp.prune_channels(fmod, x, 0.5)
    before, after = cp.count_parameters(fmod)['params'], cp.count_parameters(pruned)['params']
    assert after < 0.35 * before
    assert pruned.backbone.encoder[0][0].conv.out_channels == 2
    assert pruned(x).shape == (1, 1, 32, 48)
    assert pruned.decode_head.conv_seg.out_channels == 1


@pytest.fixture(scope='module')
def real_root(tmp_path_factory) -> Path:
    """Six real images prepared into a temporary Kaggle layout (prepare writes into the data root)."""
    if not (REAL / 'train.csv').is_file():
        pytest.skip(f'{REAL} (../shared) not available')
    import csv

    from celldata.prepare import prepare_sartorius

    root = tmp_path_factory.mktemp('real')
    with open(REAL / 'train.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    ids = sorted({r['id'] for r in rows})[:6]
    (root / 'train').mkdir()
    with open(root / 'train.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r['id'] in ids)
    for i in ids:
        shutil.copy2(REAL / 'train' / f'{i}.png', root / 'train' / f'{i}.png')
    prepare_sartorius(root, folds=2, show_progress=False)
    return root


def _trained_tiny(real_root: Path, iters: int = 15):
    cfg = load_config(
        CONFIG, {**tiny_options(), 'optim_wrapper.optimizer.lr': 1e-2, 'data_root': str(real_root)}
    )
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  (mmseg RandomCrop draws from the global state; no test-order dependence)
    seg = cp.build_segmentor(cfg)
    fmod = cp.SegLogits(seg)
    fmod.train()
    cp.finetune(fmod, seg, cfg, iters)
    return cfg, seg, fmod.eval()


@pytest.mark.slow
@needs_real
def test_ptq_int8_smaller_and_tracks_float_on_real_images(real_root, tmp_path):
    cfg, seg, fmod = _trained_tiny(real_root)
    calib = [s.inputs[..., :128, :160] for s in cp.load_samples(cfg, seg, 'train', 2)]
    val = cp.load_samples(cfg, seg, 'val')
    for s in val:  # crops keep the test fast
        s.inputs, s.gt = s.inputs[..., :96, :128], s.gt[:96, :128]
    q = cp.ptq_pt2e(fmod, calib)
    ref = cp.predict(cp.padded_fn(fmod), val)
    out = cp.predict(cp.padded_fn(q), val)
    assert out[0].shape == ref[0].shape == (1, 1, 96, 128)
    fid = cp.fidelity(ref, out)
    # stated tolerance: SQNR >= 20 dB and >= 97 % of the pixels get the same foreground decision
    assert 0.0 < fid['max_abs_diff'] and fid['sqnr_db'] >= 20.0, fid  # int8 differs, but little
    assert fid['mask_agreement'] >= 0.97, fid
    x = cp._pad16(val[0].inputs)
    float_size, int8_size = cp.saved_size(fmod), cp.saved_size(q, tmp_path / 'int8.pt2')
    assert int8_size < float_size  # the archive also holds the graph, a large share for so small a model

    def tensor_bytes(m):
        return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])

    assert tensor_bytes(q) < 0.5 * tensor_bytes(fmod)  # int8 weights: about a quarter of fp32
    assert not any(p.dtype == torch.float32 and p.dim() == 4 for p in q.parameters())
    loaded = torch.export.load(str(tmp_path / 'int8.pt2')).module()
    torch.testing.assert_close(loaded(x), q(x))


@pytest.mark.slow
@needs_real
def test_qat_trains_at_another_batch_size_than_exported(real_root):
    cfg, seg, fmod = _trained_tiny(real_root, iters=3)
    example = cp.load_samples(cfg, seg, 'train', 1)[0].inputs[..., :64, :64]  # exported with batch 1 (-> 2)
    q, losses = cp.qat_pt2e(fmod, seg, cfg, example, iters=2, lr=1e-4)  # trains on batches of 3
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert q(torch.randn(5, 3, 32, 48)).shape == (5, 1, 32, 48)


def test_cli_rejects_missing_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'compress.py'), 'ptq', str(CONFIG), str(tmp_path / 'none.pth')],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert 'checkpoint not found' in proc.stderr
