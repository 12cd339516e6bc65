"""BatchRenorm2d: equals BatchNorm2d with r_max = 1, d_max = 0; renormalizes as documented otherwise."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("mmseg")

from mmcv.cnn import build_norm_layer  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

from custom_modules.seg import BatchRenorm2d  # noqa: E402
from custom_modules.seg.batch_renorm import renorm_limits  # noqa: E402


def _pair(r_max: float, d_max: float, warmup: int = 0) -> tuple[BatchRenorm2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    brn = BatchRenorm2d(
        6, r_max=r_max, d_max=d_max, warmup_iters=warmup, r_max_ramp_iters=0, d_max_ramp_iters=0
    )
    with torch.no_grad():
        brn.weight.uniform_(0.5, 1.5)
        brn.bias.uniform_(-0.5, 0.5)
    bn = nn.BatchNorm2d(6)
    bn.load_state_dict(brn.state_dict())  # same buffers/params: state dicts are interchangeable
    return brn, bn


def test_equals_batchnorm_with_r_max_1_d_max_0() -> None:
    brn, bn = _pair(1.0, 0.0)
    for step in range(4):
        x = torch.randn(3, 6, 5, 7) * (step + 1) + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = brn.train()(xa), bn.train()(xb)
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(brn.weight.grad, bn.weight.grad)
        torch.testing.assert_close(brn.bias.grad, bn.bias.grad)
        torch.testing.assert_close(brn.running_mean, bn.running_mean)
        torch.testing.assert_close(brn.running_var, bn.running_var)
    assert int(brn.num_batches_tracked) == int(bn.num_batches_tracked) == 4
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(brn.eval()(x), bn.eval()(x))


def test_renormalizes_with_clipped_r_and_d() -> None:
    brn, bn = _pair(r_max=1.5, d_max=0.5)
    with torch.no_grad():
        brn.running_mean.copy_(torch.linspace(-2, 2, 6))
        brn.running_var.copy_(torch.linspace(0.2, 5, 6))
    mu, sigma = brn.running_mean.clone(), torch.sqrt(brn.running_var + brn.eps)
    x = torch.randn(4, 6, 3, 3) * 2 + 0.3
    y = brn.train()(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    sigma_b = torch.sqrt(var + brn.eps)
    r = (sigma_b / sigma).clamp(1 / 1.5, 1.5)
    d = ((mean - mu) / sigma).clamp(-0.5, 0.5)
    x_hat = (x - mean.view(1, -1, 1, 1)) / sigma_b.view(1, -1, 1, 1)
    expected = (x_hat * r.view(1, -1, 1, 1) + d.view(1, -1, 1, 1)) * brn.weight.view(
        1, -1, 1, 1
    ) + brn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, expected)
    assert bool(((r - 1).abs() > 1e-3).any()) and bool((d.abs() > 1e-3).any())  # the test case renormalizes
    assert not torch.allclose(y, bn.train()(x))  # and so differs from batch norm
    # running statistics are still updated as BatchNorm2d updates them
    torch.testing.assert_close(brn.running_mean, 0.9 * mu + 0.1 * mean)
    torch.testing.assert_close(brn.running_var, 0.9 * (sigma**2 - brn.eps) + 0.1 * x.var(dim=(0, 2, 3)))


def test_r_and_d_are_not_differentiated() -> None:
    """With r, d constant the input gradient is BatchNorm's gradient times gamma * r (d adds nothing)."""
    brn, _ = _pair(r_max=3.0, d_max=5.0)
    with torch.no_grad():
        brn.running_var.fill_(4.0)
        brn.running_mean.fill_(1.0)
        brn.weight.fill_(1.0)
        brn.bias.zero_()
    ref = nn.BatchNorm2d(6, affine=False)
    x = torch.randn(4, 6, 3, 3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(4, 6, 3, 3)
    brn.train()(xa).backward(g)
    ref.train()(xb).backward(g)
    r = (
        torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False) + brn.eps) / torch.sqrt(torch.tensor(4.0) + brn.eps)
    ).clamp(1 / 3, 3)
    torch.testing.assert_close(xa.grad, xb.grad * r.view(1, -1, 1, 1))


def test_eval_uses_running_statistics() -> None:
    brn, _ = _pair(3.0, 5.0)
    for _ in range(3):
        brn.train()(torch.randn(8, 6, 4, 4) * 3 + 2)
    x = torch.randn(2, 6, 4, 4)
    expected = (x - brn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        brn.running_var.view(1, -1, 1, 1) + brn.eps
    )
    expected = expected * brn.weight.view(1, -1, 1, 1) + brn.bias.view(1, -1, 1, 1)
    before = int(brn.num_batches_tracked)
    torch.testing.assert_close(brn.eval()(x), expected)
    assert int(brn.num_batches_tracked) == before  # eval does not advance the schedule


def test_warmup_schedule() -> None:
    assert renorm_limits(0, 3.0, 5.0, 10, 20, 10) == (1.0, 0.0)
    assert renorm_limits(9, 3.0, 5.0, 10, 20, 10) == (1.0, 0.0)
    assert renorm_limits(10, 3.0, 5.0, 10, 20, 10) == pytest.approx((1.1, 0.5))
    assert renorm_limits(19, 3.0, 5.0, 10, 20, 10) == pytest.approx((2.0, 5.0))
    assert renorm_limits(1000, 3.0, 5.0, 10, 20, 10) == (3.0, 5.0)
    assert renorm_limits(0, 3.0, 5.0, 0, 0, 0) == (3.0, 5.0)
    brn = BatchRenorm2d(2, r_max=3.0, d_max=5.0, warmup_iters=2, r_max_ramp_iters=4, d_max_ramp_iters=2)
    seen = []
    for _ in range(5):
        seen.append(brn.current_limits())
        brn.train()(torch.randn(2, 2, 3, 3))
    assert seen == [(1.0, 0.0), (1.0, 0.0), (1.5, 2.5), (2.0, 5.0), (2.5, 5.0)]
    # during warm-up the layer is batch norm exactly
    brn2, bn = _pair(3.0, 5.0, warmup=5)
    x = torch.randn(3, 6, 4, 4)
    torch.testing.assert_close(brn2.train()(x), bn.train()(x))


def test_registered_as_brn_norm_layer() -> None:
    for scope in ("mmseg", "mmdet"):
        with DefaultScope.overwrite_default_scope(scope):
            name, layer = build_norm_layer(dict(type="BRN", r_max=2.0, d_max=1.0, requires_grad=False), 16)
        assert name == "bn" and isinstance(layer, BatchRenorm2d)
        assert layer.num_features == 16 and layer.r_max == 2.0 and layer.d_max == 1.0
        assert not layer.weight.requires_grad
    layer2 = copy.deepcopy(layer)
    layer2.load_state_dict(nn.BatchNorm2d(16).state_dict(), strict=True)


@pytest.mark.parametrize(
    "kwargs",
    [dict(r_max=0.5), dict(d_max=-1.0), dict(warmup_iters=-1), dict(r_max_ramp_iters=1.5)],
)
def test_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="BatchRenorm2d"):
        BatchRenorm2d(4, **kwargs)
