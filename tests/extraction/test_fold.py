"""BatchNorm folding at extraction (tlkit.extraction.fold): the folded copy gives the same features as the network it
was made from, the caller's backbone is never changed, and a network where folding would be wrong is left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tlkit
from tlkit.contract.backbone import Backbone
from tlkit.extraction.fold import conv_bn_pairs, folded_copy
from tlkit.extraction.forward import Runner
from tlkit.runtime import RuntimeOptions, resolve

pytestmark = pytest.mark.usefixtures("one_thread")


def _fp32() -> object:
    return resolve("extract", RuntimeOptions.of("cpu", "fp32", 8, 0))


def _features(bb: Backbone, x: torch.Tensor, fold: bool) -> tuple[torch.Tensor, int]:
    with Runner(bb, _fp32(), fold=fold) as r:  # type: ignore[arg-type]
        feats = r.forward(r.to_device(x), [], int(x.shape[0]))[0]
        return feats, r.folded


@pytest.mark.parametrize("name", ["effnet/lite0", "torchvision/resnet18"])
def test_folded_features_match_and_the_backbone_is_given_back_unchanged(name: str) -> None:
    """Real networks (the example plugin's ImageNet weights; torchvision's ResNet-18 architecture): every BatchNorm
    that follows a convolution is folded, the features match the unfolded forward, and the caller's module (its
    BatchNorms, its weights) is the same object with the same values afterwards."""
    bb = tlkit.get_backbone(name, weights="none" if name.startswith("torchvision") else "pretrained").load()
    module = bb.module
    before = {k: v.clone() for k, v in module.state_dict().items()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    x = torch.rand(4, 3, 224, 224) * 2 - 1
    folded, k = _features(bb, x, fold=True)
    plain, k0 = _features(bb, x, fold=False)
    assert k0 == 0
    assert k == n_bn > 10  # every BatchNorm of these networks follows a convolution
    cos = torch.nn.functional.cosine_similarity(folded, plain, dim=1)
    assert float(cos.min()) > 0.99999
    assert torch.allclose(folded, plain, rtol=1e-3, atol=1e-4 * float(plain.abs().max()))
    assert bb.module is module
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bb.module.modules()) == n_bn
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _ReadsPreNorm(nn.Module):
    """A conv whose output is read by its BatchNorm *and* by a skip connection: folding it would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return (self.bn(y) + y).mean(dim=(2, 3))


class _Shared(nn.Module):
    """One BatchNorm called after two convolutions: it cannot be folded into either."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_var.fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.bn(self.a(x)) + self.bn(self.b(x))).mean(dim=(2, 3))


def test_a_fold_that_would_change_the_output_is_not_used() -> None:
    net = _ReadsPreNorm().eval()
    x = torch.randn(2, 3, 8, 8)
    pairs, _ = conv_bn_pairs(net, lambda m: m(x))
    assert pairs == [("conv", "bn")]  # the hooks see the pair ...
    out, k = folded_copy(net, lambda m: m(x))
    assert (out, k) == (net, 0)  # ... and the check against the original refuses it
    assert isinstance(net.bn, nn.BatchNorm2d)


def test_a_batchnorm_called_twice_is_not_paired() -> None:
    net = _Shared().eval()
    x = torch.randn(2, 3, 8, 8)
    assert conv_bn_pairs(net, lambda m: m(x))[0] == []
    assert folded_copy(net, lambda m: m(x)) == (net, 0)
