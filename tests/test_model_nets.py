"""Networks as parts: output shapes for images and vectors, the IWAE sizes, option checks, YAMLs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vaelab.errors import UserError
from vaelab.model.nets.conv import Conv, downsampling_plan, use_channels_last
from vaelab.model.nets.mlp import MLP
from vaelab.model.nets.resnet import ResNet
from vaelab.model.parts import build

CONF = Path(__file__).resolve().parents[1] / "conf" / "net"
SMALL = {
    "mlp": lambda: MLP(hidden=[16, 8]),
    "conv": lambda: Conv(channels=[4, 8, 8, 8]),
    "resnet": lambda: ResNet(channels=[4, 8, 8, 8]),
}
# (encoder in_shape, decoder out_shape): digits; faces; conditioning planes in, P=2 numbers per value out
SHAPES = [((1, 28, 28), (1, 28, 28)), ((3, 64, 64), (3, 64, 64)), ((4, 28, 28), (2, 28, 28))]


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("in_shape,out_shape", SHAPES)
def test_image_shapes(name, in_shape, out_shape):
    torch.manual_seed(0)
    net = SMALL[name]()
    enc, dec = net.encoder(in_shape, 10), net.decoder(5, out_shape)
    assert enc(torch.rand(2, *in_shape)).shape == (2, 10)
    assert dec(torch.randn(2, 5)).shape == (2, *out_shape)


def test_mlp_vector_shapes_for_hierarchical_layers():
    net = MLP(hidden=[8])
    enc, dec = net.encoder((100,), 2 * 50), net.decoder(50, (2 * 100,))
    assert enc(torch.randn(3, 100)).shape == (3, 100)
    assert dec(torch.randn(3, 50)).shape == (3, 200)
    assert net.decoder(4, 7)(torch.randn(2, 4)).shape == (2, 7)  # an int is the vector shape (n,)


def test_mlp_without_hidden_layers_is_one_linear_map():
    enc = MLP(hidden=[]).encoder((2, 3), 4)
    assert [(m.in_features, m.out_features) for m in enc if isinstance(m, nn.Linear)] == [(6, 4)]


def _linears(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_iwae_architecture_sizes():
    net = MLP(hidden=[200, 200], activation="tanh")
    enc, dec = net.encoder((1, 28, 28), 2 * 50), net.decoder(50, (1, 28, 28))
    assert _linears(enc) == [(784, 200), (200, 200), (200, 100)]
    assert _linears(dec) == [(50, 200), (200, 200), (200, 784)]
    assert [type(m) for m in enc if not isinstance(m, nn.Linear)] == [nn.Flatten, nn.Tanh, nn.Tanh]


def test_mlp_activation_between_layers_only():
    x = torch.full((1, 3), -1.0)
    enc = MLP(hidden=[3], activation="relu").encoder((3,), 2)
    with torch.no_grad():
        for lin in (enc[1], enc[3]):
            lin.weight.copy_(torch.eye(lin.out_features, lin.in_features))
            lin.bias.zero_()
        enc[3].bias.fill_(-2.0)
    # relu(-1) = 0 after the hidden layer; no activation on the output, so a negative bias survives
    assert enc(x).tolist() == [[-2.0, -2.0]]


def test_conv_plan_depends_on_sides():
    assert downsampling_plan((64, 64), (32, 64, 128, 256)) == [32, 64, 128, 256]
    assert downsampling_plan((28, 28), (32, 64, 128, 256)) == [32, 64]
    assert downsampling_plan((32, 28), (8, 8, 8)) == [8, 8]
    with pytest.raises(UserError, match=r"even and at least 8.*MLP"):
        downsampling_plan((7, 7), (32,))


def test_conv_layer_counts_follow_the_plan():
    count = lambda m, t: sum(isinstance(x, t) for x in m.modules())  # noqa: E731
    net = Conv(channels=[4, 8, 8, 8])
    assert count(net.encoder((3, 64, 64), 6), nn.Conv2d) == 4
    assert count(net.encoder((1, 28, 28), 6), nn.Conv2d) == 2
    assert count(net.decoder(6, (1, 28, 28)), nn.ConvTranspose2d) == 2
    # flattened features of the 28×28 encoder: 8 channels at 7×7
    assert net.encoder((1, 28, 28), 6).head.in_features == 8 * 7 * 7


@pytest.mark.parametrize("net", [Conv(), ResNet()], ids=["conv", "resnet"])
@pytest.mark.parametrize("method,args", [("encoder", ((100,), 10)), ("decoder", (10, (200,)))])
def test_conv_nets_refuse_vectors(net, method, args):
    with pytest.raises(UserError, match=r"needs image shapes \(C, H, W\).*Use an MLP"):
        getattr(net, method)(*args)


@pytest.mark.parametrize(
    "make,option",
    [
        (lambda: MLP(activation="relux"), "activation='relux' is not one of relu, tanh, elu"),
        (lambda: MLP(hidden=[400, 0]), "hidden="),
        (lambda: MLP(hidden="400"), "hidden="),
        (lambda: Conv(channels=[]), "channels="),
        (lambda: Conv(channels=[32, -1]), "channels="),
        (lambda: ResNet(channels=[32.5]), "channels="),
        (lambda: ResNet(blocks_per_stage=-1), "blocks_per_stage=-1"),
        (lambda: ResNet(norm="layer"), "norm='layer' is not one of batch, group"),
        (lambda: ResNet(activation="relu"), "activation='relu' is not one of silu, leaky_relu"),
        (lambda: ResNet(upsample="bilinear"), "upsample='bilinear' is not one of nearest, transposed"),
    ],
)
def test_bad_options_name_the_option(make, option):
    with pytest.raises(UserError) as err:
        make()
    assert option in str(err.value)


def test_resnet_blocks_and_norms():
    count = lambda m, t: sum(isinstance(x, t) for x in m.modules())  # noqa: E731
    from vaelab.model.nets.resnet import ResidualBlock

    net = ResNet(channels=[4, 8], blocks_per_stage=2, norm="group", upsample="transposed")
    enc, dec = net.encoder((1, 28, 28), 6), net.decoder(3, (1, 28, 28))
    assert count(enc, ResidualBlock) == count(dec, ResidualBlock) == 4
    assert count(enc, nn.BatchNorm2d) == count(dec, nn.BatchNorm2d) == 0
    assert count(dec, nn.ConvTranspose2d) == 2
    assert dec(torch.randn(2, 3)).shape == (2, 1, 28, 28)
    # GroupNorm makes each example's code independent of the rest of the batch
    enc.train()
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(enc(x)[:1], enc(x[:1]))


def test_residual_block_with_zero_body_is_activation_of_input():
    from vaelab.model.nets.resnet import ResidualBlock

    block = ResidualBlock(4, "group", "silu")
    with torch.no_grad():
        block.body[-1].weight.zero_()  # last norm's scale 0: the body adds nothing
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), nn.functional.silu(x))


@pytest.mark.parametrize("name", SMALL)
def test_gradient_reaches_every_parameter(name):
    torch.manual_seed(0)
    net = SMALL[name]()
    enc, dec = net.encoder((4, 28, 28), 6), net.decoder(3, (2, 28, 28))
    loss = dec(enc(torch.rand(4, 4, 28, 28))[:, :3]).square().mean()
    loss.backward()
    for module in (enc, dec):
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("yaml", sorted(p.name for p in CONF.glob("*.yaml")))
def test_each_yaml_builds_and_gives_right_shapes(yaml):
    spec = OmegaConf.load(CONF / yaml)
    net = build(spec, image_shape=(1, 28, 28), latent_dim=4)  # context a net does not take is dropped
    enc, dec = net.encoder((2, 28, 28), 8), net.decoder(4, (3, 28, 28))
    enc.eval(), dec.eval()
    assert enc(torch.rand(2, 2, 28, 28)).shape == (2, 8)
    assert dec(torch.randn(2, 4)).shape == (2, 3, 28, 28)


def test_yamls_cover_every_net_and_the_iwae_one():
    names = {p.stem: OmegaConf.load(p) for p in CONF.glob("*.yaml")}
    assert {"mlp", "mlp_iwae", "conv", "resnet"} <= set(names)
    assert names["mlp"].hidden == [400] and names["mlp"].activation == "relu"
    assert names["mlp_iwae"].hidden == [200, 200] and names["mlp_iwae"].activation == "tanh"


def test_yaml_typo_is_a_user_error_listing_the_options():
    spec = {**OmegaConf.to_container(OmegaConf.load(CONF / "resnet.yaml")), "block_per_stage": 2}
    with pytest.raises(UserError, match="no option block_per_stage.*blocks_per_stage"):
        build(spec)


def test_resnet_default_size_is_close_to_conv():
    size = lambda net: sum(  # noqa: E731
        p.numel()
        for m in (net.encoder((3, 64, 64), 256), net.decoder(128, (3, 64, 64)))
        for p in m.parameters()
    )
    assert 1.0 < size(ResNet()) / size(Conv()) < 2.0


@pytest.mark.parametrize("name", ["conv", "resnet"])
def test_channels_last_keeps_values(name):
    torch.manual_seed(0)
    enc = SMALL[name]().encoder((3, 32, 32), 5).eval()
    x = torch.rand(2, 3, 32, 32)
    before = enc(x)
    use_channels_last(enc)
    assert len(enc._forward_pre_hooks) == 1
    torch.testing.assert_close(enc(x), before)
    conv = next(m for m in enc.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_bad_option_through_build_is_the_parts_own_user_error():
    with pytest.raises(UserError, match="MLP: activation='relux' is not one of"):
        build({"_target_": "vaelab.model.nets.mlp.MLP", "activation": "relux"})
