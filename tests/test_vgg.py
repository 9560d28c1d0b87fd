"""The VGG19 feature stack: torchvision layout, checkpoint validation, truncation, frozen weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checkpoints import make_vgg19_state_dict, save_checkpoint

from nst_daemon.engines import CheckpointError
from nst_daemon.engines.vgg import (
    EXPECTED_SHAPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_INDEX,
    VGG19Features,
    load_vgg_state_dict,
    min_input_side,
    validate_vgg_state_dict,
)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return make_vgg19_state_dict(seed=0)


def test_layer_indices_match_torchvision() -> None:
    assert {name: LAYER_INDEX[name] for name in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2")} == {
        "relu1_1": 1,
        "relu2_1": 6,
        "relu3_1": 11,
        "relu4_1": 20,
        "relu4_2": 22,
    }
    assert LAYER_INDEX["relu5_1"] == 29
    assert [LAYER_INDEX[f"pool{i}"] for i in range(1, 6)] == [4, 9, 18, 27, 36]
    assert LAYER_INDEX["conv1_1"] == 0 and LAYER_INDEX["conv3_1"] == 10 and LAYER_INDEX["conv5_4"] == 34


def test_generated_checkpoint_has_torchvision_keys(state_dict: dict[str, torch.Tensor]) -> None:
    indices = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
    assert set(state_dict) == {f"features.{i}.{p}" for i in indices for p in ("weight", "bias")}
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == EXPECTED_SHAPES


def test_classifier_keys_are_ignored() -> None:
    full = make_vgg19_state_dict(seed=0, with_classifier=True)
    assert full["classifier.0.weight"].shape == (4096, 25088)
    assert set(validate_vgg_state_dict(full)) == set(EXPECTED_SHAPES)


def test_truncates_after_the_deepest_layer(state_dict: dict[str, torch.Tensor]) -> None:
    assert len(VGG19Features(["conv1_1"], state_dict).features) == 1
    assert len(VGG19Features(["relu3_1", "relu1_1"], state_dict).features) == 12
    gatys = VGG19Features(["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2"], state_dict)
    assert len(gatys.features) == 30


def test_frozen_and_weights_loaded_by_key(state_dict: dict[str, torch.Tensor]) -> None:
    net = VGG19Features(["relu2_1"], state_dict)
    assert all(not p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    assert torch.equal(net.features[5].weight, state_dict["features.5.weight"])
    assert set(net.state_dict()) == {f"features.{i}.{p}" for i in (0, 2, 5) for p in ("weight", "bias")}


def test_conv_features_are_pre_relu_and_normalized(state_dict: dict[str, torch.Tensor]) -> None:
    net = VGG19Features(["conv1_1", "relu1_1", "conv3_1", "relu3_1"], state_dict)
    image = torch.rand(1, 3, 32, 40)
    with torch.inference_mode():
        out = net(image)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = F.conv2d(
        (image - mean) / std, state_dict["features.0.weight"], state_dict["features.0.bias"], padding=1
    )
    torch.testing.assert_close(out["conv1_1"], expected, rtol=1e-4, atol=1e-4)
    assert (out["conv1_1"] < 0).any(), "the conv output was overwritten by an in-place ReLU"
    torch.testing.assert_close(out["relu1_1"], out["conv1_1"].clamp_min(0))
    torch.testing.assert_close(out["relu3_1"], out["conv3_1"].clamp_min(0))
    assert out["conv3_1"].shape == (1, 256, 8, 10)


def test_gradients_flow_to_the_image(state_dict: dict[str, torch.Tensor]) -> None:
    net = VGG19Features(["relu2_1", "conv2_2"], state_dict)
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    out = net(image)
    (out["relu2_1"].sum() + out["conv2_2"].square().sum()).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_validate_names_a_missing_key(state_dict: dict[str, torch.Tensor]) -> None:
    broken = dict(state_dict)
    del broken["features.10.weight"]
    with pytest.raises(CheckpointError, match=r"features\.10\.weight"):
        validate_vgg_state_dict(broken)


def test_validate_names_a_wrong_shape_with_both_shapes(state_dict: dict[str, torch.Tensor]) -> None:
    broken = dict(state_dict)
    broken["features.21.weight"] = torch.zeros(512, 256, 3, 3)
    with pytest.raises(CheckpointError) as info:
        validate_vgg_state_dict(broken)
    message = str(info.value)
    assert "features.21.weight" in message and "(512, 256, 3, 3)" in message and "(512, 512, 3, 3)" in message


def test_validate_refuses_other_things() -> None:
    with pytest.raises(CheckpointError):
        validate_vgg_state_dict([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"features\.0\.weight"):
        validate_vgg_state_dict({"model.1.weight": torch.zeros(64, 3, 7, 7)})


def test_load_from_file(tmp_path, state_dict: dict[str, torch.Tensor]) -> None:
    small = {k: v for k, v in state_dict.items()}
    path = save_checkpoint(small, tmp_path / "vgg19.pth")
    loaded = load_vgg_state_dict(path)
    assert torch.equal(loaded["features.34.bias"], state_dict["features.34.bias"])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        load_vgg_state_dict(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vgg_state_dict(tmp_path / "absent.pth")


def test_unknown_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="conv6_1"):
        VGG19Features(["conv6_1"])


def test_min_input_side() -> None:
    assert min_input_side(["relu1_1"]) == 1
    assert min_input_side(["relu3_1"]) == 4
    assert min_input_side(["relu5_1", "relu4_2"]) == 16
