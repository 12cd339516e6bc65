"""Feature Random Enhancement module, its redraw hook on a real mmengine Runner, SE block and SE-U-Net."""

from __future__ import annotations

import uuid

import pytest
import torch
from torch import nn

pytest.importorskip("mmseg")

from mmengine.model import BaseModel  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import HOOKS, MODELS  # noqa: E402

from custom_modules.seg import FeatureRandomEnhancement, FRERedrawHook, SEBlock, SEUNet  # noqa: E402


def test_fre_train_scales_exactly_b_channels() -> None:
    fre = FeatureRandomEnhancement(num_channels=64, num_enhanced=20, factor=632.0, seed=1).train()
    x = torch.rand(2, 64, 5, 7) + 0.1
    y = fre(x)
    ratio = (y / x).amax(dim=(0, 2, 3))
    assert torch.allclose((y / x).amin(dim=(0, 2, 3)), ratio)  # whole feature maps are scaled
    enhanced = torch.nonzero(ratio > 1.5).flatten()
    assert len(enhanced) == 20
    assert torch.equal(enhanced, fre.enhanced_channels)
    assert torch.allclose(ratio[enhanced], torch.full((20,), 632.0))
    keep = torch.ones(64, dtype=torch.bool)
    keep[enhanced] = False
    assert torch.equal(y[:, keep], x[:, keep])


def test_fre_eval_is_identity_and_gradients_flow() -> None:
    fre = FeatureRandomEnhancement(num_channels=8, num_enhanced=3, factor=250.0)
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    assert fre.eval()(x) is x
    fre.train()(x).sum().backward()
    grad = x.grad[0, :, 0, 0]
    assert sorted(grad.unique().tolist()) == [1.0, 250.0]
    assert int((grad == 250.0).sum()) == 3


def test_fre_redraw_changes_selection_and_seed_reproduces() -> None:
    a = FeatureRandomEnhancement(num_channels=512, num_enhanced=162, factor=632.0, seed=7)
    b = FeatureRandomEnhancement(num_channels=512, num_enhanced=162, factor=632.0, seed=7)
    draws_a = [a.enhanced_channels.tolist()] + [a.redraw().tolist() for _ in range(3)]
    draws_b = [b.enhanced_channels.tolist()] + [b.redraw().tolist() for _ in range(3)]
    assert draws_a == draws_b
    assert all(len(d) == 162 == len(set(d)) for d in draws_a)
    assert len({tuple(d) for d in draws_a}) == 4
    assert a.num_draws == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_channels=8, num_enhanced=9, factor=2.0),
        dict(num_channels=8, num_enhanced=-1, factor=2.0),
        dict(num_channels=0, num_enhanced=0, factor=2.0),
        dict(num_channels=8, num_enhanced=2, factor=float("nan")),
    ],
)
def test_fre_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="FeatureRandomEnhancement"):
        FeatureRandomEnhancement(**kwargs)


def test_fre_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="expected input"):
        FeatureRandomEnhancement(num_channels=8, num_enhanced=2, factor=2.0)(torch.zeros(1, 4, 2, 2))


def test_se_block_shapes_and_channelwise_scaling() -> None:
    se = SEBlock(32, ratio=8).eval()
    assert se.fc1.out_channels == 4
    x = torch.randn(3, 32, 9, 11)
    y = se(x)
    assert y.shape == x.shape
    w = se.channel_weights(x)
    assert w.shape == (3, 32, 1, 1) and bool(((w > 0) & (w < 1)).all())
    torch.testing.assert_close(y, x * w)
    assert SEBlock(4, ratio=16).fc1.out_channels == 1
    with pytest.raises(ValueError, match="SEBlock"):
        se(torch.randn(1, 16, 2, 2))


def test_se_unet_output_shapes_and_odd_sizes() -> None:
    net = SEUNet(in_channels=3, base_channels=4, num_stages=4).eval()
    outs = net(torch.randn(1, 3, 65, 90))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 11), (1, 16, 16, 22), (1, 8, 32, 45), (1, 4, 65, 90)]
    assert tuple(net.out_channels) == (32, 16, 8, 4)
    with pytest.raises(ValueError, match="num_channels"):
        SEUNet(base_channels=4, num_stages=3, fre_cfg=dict(num_channels=99, num_enhanced=1, factor=2.0))


def test_se_unet_fre_eval_equals_model_without_fre() -> None:
    torch.manual_seed(0)
    with_fre = SEUNet(base_channels=4, num_stages=3, fre_cfg=dict(num_enhanced=5, factor=632.0))
    plain = SEUNet(base_channels=4, num_stages=3)
    plain.load_state_dict(with_fre.state_dict(), strict=True)  # FRE has no state
    x = torch.randn(2, 3, 32, 48)
    with_fre.eval()
    plain.eval()
    with torch.no_grad():
        for a, b in zip(with_fre(x), plain(x), strict=True):
            assert torch.equal(a, b)
    # In training mode the FRE model differs (BN in train mode on both, same batch).
    with_fre.train()
    plain.train()
    with torch.no_grad():
        assert not torch.allclose(with_fre(x)[-1], plain(x)[-1])


def test_dropout_variant_rate() -> None:
    net = SEUNet(base_channels=8, num_stages=4, bottleneck_dropout=20 / 64)
    assert isinstance(net.dropout, nn.Dropout2d) and net.dropout.p == pytest.approx(20 / 64)
    with pytest.raises(ValueError, match="bottleneck_dropout"):
        SEUNet(bottleneck_dropout=1.0)


def test_registered() -> None:
    assert MODELS.get("SEUNet") is SEUNet
    assert MODELS.get("FeatureRandomEnhancement") is FeatureRandomEnhancement
    assert MODELS.get("SEBlock") is SEBlock
    # built as an mmseg config builds it (other tests may have left another library's scope as the default)
    with DefaultScope.overwrite_default_scope("mmseg"):
        hook = HOOKS.build(dict(type="FRERedrawHook", interval=3))
    assert isinstance(hook, FRERedrawHook) and hook.interval == 3
    with pytest.raises(ValueError, match="interval"):
        FRERedrawHook(interval=0)


class _ToyFREModel(BaseModel):
    """Conv + FRE model that records the enhanced channels seen at every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 1)
        self.fre = FeatureRandomEnhancement(num_channels=16, num_enhanced=4, factor=10.0)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, inputs: torch.Tensor, labels=None, mode: str = "tensor"):
        if self.training:
            self.seen.append(tuple(self.fre.enhanced_channels.tolist()))
        y = self.fre(self.conv(inputs))
        if mode == "loss":
            return dict(loss=y.mean())
        return y


class _ToyDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=torch.randn(1, 4, 4))


def _run(tmp_path, train_cfg: dict, hook: FRERedrawHook, sampler: str) -> _ToyFREModel:
    torch.manual_seed(0)
    model = _ToyFREModel()
    runner = Runner(
        model=model,
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=_ToyDataset(),
            sampler=dict(type=sampler, shuffle=False),
            batch_size=2,
            num_workers=0,
            collate_fn=dict(type="default_collate"),
        ),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        train_cfg=train_cfg,
        custom_hooks=[hook],
        default_hooks=dict(checkpoint=None, logger=None),
        log_level="WARNING",
        default_scope="mmseg",
        experiment_name=f"fre_hook_{uuid.uuid4().hex[:8]}",
    )
    runner.train()
    return model


def test_hook_redraws_every_epoch_on_epoch_runner(tmp_path) -> None:
    model = _run(tmp_path, dict(by_epoch=True, max_epochs=4), FRERedrawHook(), "DefaultSampler")
    assert len(model.seen) == 8  # 4 epochs x 2 iterations
    per_epoch = [model.seen[i : i + 2] for i in range(0, 8, 2)]
    assert all(a == b for a, b in per_epoch)  # constant within an epoch
    firsts = [e[0] for e in per_epoch]
    assert len(set(firsts)) == 4  # re-drawn at every epoch (C(16,4) = 1820 choices)
    assert model.fre.num_draws == 1 + 4  # construction + one per epoch


def test_hook_redraws_every_n_iters_and_per_dataloader_length(tmp_path) -> None:
    model = _run(
        tmp_path / "a", dict(by_epoch=False, max_iters=6), FRERedrawHook(interval=3), "InfiniteSampler"
    )
    assert model.fre.num_draws == 1 + 2  # iterations 0 and 3
    assert model.seen[0] == model.seen[2] != model.seen[3] == model.seen[5]
    model = _run(tmp_path / "b", dict(by_epoch=False, max_iters=6), FRERedrawHook(), "InfiniteSampler")
    # 'epoch' with an iteration loop: every ceil(len(dataset) / batch) = 2 iterations (at 0, 2, 4)
    assert model.fre.num_draws == 1 + 3
    assert (
        model.seen[0] == model.seen[1] and model.seen[2] == model.seen[3] and model.seen[4] == model.seen[5]
    )
    assert len({model.seen[0], model.seen[2], model.seen[4]}) == 3


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import logging
    from types import SimpleNamespace

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # ranks would draw different channels without the broadcast
        fre = FeatureRandomEnhancement(num_channels=64, num_enhanced=16, factor=5.0)
        before = fre.selected.clone()
        runner = SimpleNamespace(model=nn.Sequential(fre), logger=logging.getLogger("fre-test"))
        FRERedrawHook()._redraw(runner)
        torch.save(dict(before=before, after=fre.selected.clone()), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_hook_broadcasts_selection_across_ranks(tmp_path) -> None:
    """In DDP (gloo, 2 processes) all ranks enhance the channels drawn by rank 0."""
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert not torch.equal(r0["before"], r1["before"])  # independent draws before the hook
    assert torch.equal(r0["after"], r1["after"]) and int(r0["after"].sum()) == 16


def test_fre_fixed_channels_never_change() -> None:
    fre = FeatureRandomEnhancement(num_channels=64, factor=1e4, fixed_channels=[9, 3, 0]).train()
    assert fre.num_enhanced == 3 and fre.enhanced_channels.tolist() == [0, 3, 9]
    for _ in range(3):
        assert fre.redraw().tolist() == [0, 3, 9]
    x = torch.rand(2, 64, 3, 3) + 0.1
    ratio = (fre(x) / x).amax(dim=(0, 2, 3))
    assert torch.nonzero(ratio > 1.5).flatten().tolist() == [0, 3, 9]
    torch.testing.assert_close(ratio[[0, 3, 9]], torch.full((3,), 1e4))
    assert fre.eval()(x) is x
    net = SEUNet(base_channels=4, num_stages=3, fre_cfg=dict(fixed_channels=list(range(10)), factor=1e4))
    assert net.fre.fixed_channels == tuple(range(10))
    with pytest.raises(ValueError, match="fixed_channels"):
        FeatureRandomEnhancement(num_channels=8, factor=2.0, fixed_channels=[1, 1])
    with pytest.raises(ValueError, match="fixed_channels"):
        FeatureRandomEnhancement(num_channels=8, factor=2.0, fixed_channels=[8])
    with pytest.raises(ValueError, match="num_enhanced"):
        FeatureRandomEnhancement(num_channels=8, num_enhanced=2, factor=2.0, fixed_channels=[1])
    with pytest.raises(ValueError, match="num_enhanced"):
        FeatureRandomEnhancement(num_channels=8, factor=2.0)


def _brn_fre_unet() -> SEUNet:
    torch.manual_seed(0)
    brn = dict(type="BRN", warmup_iters=2, r_max_ramp_iters=3, d_max_ramp_iters=3)
    return SEUNet(
        base_channels=4, num_stages=3, se_ratio=2, norm_cfg=brn, fre_cfg=dict(num_enhanced=6, factor=632.0)
    )


def test_precise_bn_changes_only_norm_buffers_and_matches_features_without_fre() -> None:
    from custom_modules.seg import recompute_norm_stats

    net = _brn_fre_unet().train()
    with torch.no_grad():
        for _ in range(6):  # training steps with FRE: the norm layers after the bottleneck learn its scale
            net(torch.randn(2, 3, 32, 32))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [torch.randn(3, 3, 32, 32) for _ in range(4)]

    # reference: the same weights without FRE and with plain BatchNorm in train mode (batch statistics);
    # record the per-batch mean and unbiased variance of every norm layer's input
    plain = SEUNet(base_channels=4, num_stages=3, se_ratio=2, norm_cfg=dict(type="BN"))
    plain.load_state_dict(net.state_dict(), strict=True)
    plain.train()
    names = [n for n, m in plain.named_modules() if isinstance(m, nn.BatchNorm2d)]
    seen: dict[str, list] = {n: [] for n in names}
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, n=n: seen[n].append(
                (inp[0].mean(dim=(0, 2, 3)), inp[0].var(dim=(0, 2, 3), unbiased=True))
            )
        )
        for n, m in plain.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        for b in batches:
            plain(b)
    for h in hooks:
        h.remove()
    decoder_bn = "decoder.0.conv1.bn"
    ref_var = torch.stack([v for _, v in seen[decoder_bn]]).mean(0)
    assert float(before[f"{decoder_bn}.running_var"].mean()) > 100 * float(ref_var.mean())  # polluted by FRE

    used = recompute_norm_stats(net, batches)
    assert used == 4 and net.training  # mode restored
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert all(after[k].item() == before[k].item() for k in before if k.endswith("num_batches_tracked"))
    for n in names:
        mean = torch.stack([m for m, _ in seen[n]]).mean(0)
        var = torch.stack([v for _, v in seen[n]]).mean(0)
        torch.testing.assert_close(after[f"{n}.running_mean"], mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(after[f"{n}.running_var"], var, rtol=1e-4, atol=1e-5)
    # eval mode of the FRE model now equals eval mode of the model without FRE carrying these statistics
    plain.load_state_dict(after, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x)[-1], plain.eval()(x)[-1])
    with pytest.raises(ValueError, match="num_batches"):
        recompute_norm_stats(net, batches, num_batches=0)


class _ToyBNModel(BaseModel):
    """Conv -> FRE -> BN, the last norm statistics polluted by FRE during training."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 1)
        self.fre = FeatureRandomEnhancement(num_channels=8, num_enhanced=4, factor=100.0, seed=0)
        self.bn = nn.BatchNorm2d(8)
        self.precise_inputs: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor, labels=None, mode: str = "tensor"):
        y = self.bn(self.fre(self.conv(inputs)))
        if mode == "loss":
            return dict(loss=y.pow(2).mean())
        if not self.fre.training:  # the precise-BN pass (FRE off)
            self.precise_inputs.append(self.conv(inputs).detach())
        return y


def test_precise_bn_hook_on_runner(tmp_path) -> None:
    from custom_modules.seg import PreciseBNHook

    torch.manual_seed(0)
    model = _ToyBNModel()
    runner = Runner(
        model=model,
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=_ToyDataset(),
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_size=2,
            num_workers=0,
            collate_fn=dict(type="default_collate"),
        ),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.0)),  # frozen weights: stats are comparable
        train_cfg=dict(by_epoch=False, max_iters=4),
        custom_hooks=[PreciseBNHook(num_batches=3)],
        default_hooks=dict(checkpoint=None, logger=None),
        log_level="WARNING",
        default_scope="mmseg",
        experiment_name=f"precise_bn_{uuid.uuid4().hex[:8]}",
    )
    runner.train()
    assert len(model.precise_inputs) == 3  # 3 batches, over more than one pass of the 4-sample set
    feats = model.precise_inputs
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3)) for f in feats]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert int(model.bn.num_batches_tracked) == 4  # the training steps only
    with pytest.raises(ValueError, match="num_batches"):
        PreciseBNHook(num_batches=0)
