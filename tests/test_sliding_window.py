"""Sliding-window inference: nnU-Net's tiling, Gaussian and mirroring, and parity with it.

The reference is nnunetv2 2.8.1 itself: its pure helpers (``compute_steps_for_sliding_window``,
``compute_gaussian``) and ``nnUNetPredictor.predict_sliding_window_return_logits`` set up with
``manual_initialization`` (its trainer registry is never imported; see
``../shared/NNUNET_ORACLE.md``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.inference.sliding_window_prediction import (
    compute_gaussian,
    compute_steps_for_sliding_window,
)
from torch import nn

from medseg.inference.sliding_window import (
    InferenceError,
    flip_sets,
    gaussian_importance,
    pad_to_patch,
    predict_logits,
    predict_probabilities,
    tile_slices,
    tile_starts,
)

# --- tiling and weights -------------------------------------------------------------


@pytest.mark.parametrize("step", [0.5, 0.25, 1 / 3, 0.7, 1.0])
@pytest.mark.parametrize("patch", [1, 2, 5, 32, 48, 64, 127])
def test_tile_starts_match_nnunet(patch: int, step: float) -> None:
    for size in range(1, 3 * patch + 40):
        ours = tile_starts([size], [patch], step)[0]
        theirs = compute_steps_for_sliding_window((size,), (patch,), step)[0]
        if size >= patch:
            assert ours == theirs, (size, patch, step)
        else:  # nnU-Net pads first; its helper gives [0] or, far below the patch, []
            assert ours == [0] and theirs in ([0], []), (size, patch, step)


def test_tile_starts_by_hand() -> None:
    assert tile_starts((110, 64, 45), (64, 64, 32)) == [[0, 23, 46], [0], [0, 13]]
    assert tile_starts((70,), (48,)) == [[0, 22]]
    assert tile_starts((20,), (32,)) == [[0]]
    with pytest.raises(InferenceError, match="step"):
        tile_starts((64,), (32,), step=0.0)
    with pytest.raises(InferenceError, match="axes"):
        tile_starts((64, 64), (32,))


def test_tile_slices_cover_the_image_in_nnunet_order() -> None:
    tiles = tile_slices((45, 70, 61), (32, 48, 48))
    assert len(tiles) == 8 and tiles[1] == (slice(0, 32), slice(0, 48), slice(13, 61))
    covered = np.zeros((45, 70, 61), bool)
    for tile in tiles:
        covered[tile] = True
    assert covered.all()
    slices_2d = tile_slices((3, 70, 61), (48, 48))
    assert len(slices_2d) == 12 and slices_2d[4] == (slice(1, 2), slice(0, 48), slice(0, 48))


@pytest.mark.parametrize(
    ("patch", "sigma_scale"),
    [
        ((32, 48, 48), 1 / 8),
        ((40, 56, 40), 1 / 8),
        ((5, 7, 9), 1 / 8),
        ((56, 40), 1 / 8),
        ((17, 24, 31), 1 / 16),
        ((64,), 0.3),
    ],
)
def test_gaussian_matches_nnunet(patch: tuple[int, ...], sigma_scale: float) -> None:
    ours = gaussian_importance(patch, sigma_scale)
    theirs = compute_gaussian(patch, sigma_scale, 1, dtype=torch.float32, device="cpu")
    assert ours.shape == patch and ours.dtype == torch.float32
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
    assert ours.min() > 0 and ours[tuple(p // 2 for p in patch)] == 1


def test_pad_to_patch_centres_and_crops_back() -> None:
    image = torch.arange(2 * 4 * 9 * 5, dtype=torch.float32).reshape(2, 4, 9, 5)
    padded, crop = pad_to_patch(image, (7, 8, 8))
    assert padded.shape == (2, 7, 9, 8)
    assert crop == (slice(1, 5), slice(0, 9), slice(1, 6))  # odd voxel of padding goes above
    assert torch.equal(padded[(slice(None), *crop)], image)
    same, _ = pad_to_patch(image, (3, 3))  # 2D patch: only the last two axes count
    assert same is image


def test_flip_sets_follow_nnunet_order() -> None:
    assert flip_sets((0, 1, 2), 3) == [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert flip_sets((), 3) == []
    with pytest.raises(InferenceError, match="mirror axes"):
        flip_sets((0, 3), 3)


# --- behaviour with small hand-made networks ------------------------------------------


def _identity(classes: int, rank: int = 3) -> nn.Module:
    conv = (nn.Conv2d if rank == 2 else nn.Conv3d)(classes, classes, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(classes).reshape(conv.weight.shape))
    return conv


def _one_hot(shape: tuple[int, ...], classes: int = 3, seed: int = 0) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, classes, shape)
    return (labels[None] == np.arange(classes).reshape(-1, *[1] * len(shape))).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((20, 37, 29), (16, 16, 16)),
        ((10, 37, 5), (16, 16, 16)),
        ((16, 16, 16), (16, 16, 16)),
        ((6, 33, 21), (16, 16)),
    ],
)
def test_identity_network_gives_back_its_input(shape, patch) -> None:
    image = _one_hot(shape)
    net = _identity(3, len(patch))
    logits = predict_logits(net, image, patch, tile_batch=3, mirror_axes=(0, 1))
    assert logits.shape == image.shape and logits.dtype == torch.float32
    assert torch.equal(logits, torch.from_numpy(image))  # 1 and 0 come back exactly
    aliasing = predict_logits(nn.Identity(), image, patch, mirror_axes=(0, 1))  # output is input
    assert torch.equal(aliasing, torch.from_numpy(image))


def test_mirroring_with_flip_equivariant_network_changes_nothing() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, padding=1)
    with torch.no_grad():  # a kernel symmetric under every flip makes the net equivariant
        w = conv.weight
        for dims in [(2,), (3,), (4,)]:
            w.copy_(w + torch.flip(w, dims))
    net = nn.Sequential(conv, nn.LeakyReLU(), nn.Conv3d(3, 3, 1))
    image = torch.randn(2, 21, 30, 27)
    plain = predict_logits(net, image, (16, 16, 16))
    mirrored = predict_logits(net, image, (16, 16, 16), mirror_axes=(0, 1, 2), tile_batch=2)
    assert torch.allclose(plain, mirrored, atol=1e-5)


def test_deterministic_and_batch_independent() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.Conv3d(4, 2, 1))
    image = torch.randn(1, 19, 26, 23)
    first = predict_logits(net, image, (12, 16, 16), mirror_axes=(1,))
    again = predict_logits(net, image, (12, 16, 16), mirror_axes=(1,))
    batched = predict_logits(net, image, (12, 16, 16), mirror_axes=(1,), tile_batch=5)
    assert torch.equal(first, again)
    assert torch.allclose(first, batched, atol=1e-5)


def test_probabilities_progress_and_training_flag() -> None:
    net = nn.Conv3d(1, 3, 1).train()
    calls: list[tuple[int, int]] = []
    image = torch.randn(1, 20, 20, 20)
    probs = predict_probabilities(
        net, image, (16, 16, 16), tile_batch=3, progress=lambda d, n: calls.append((d, n))
    )
    assert probs.shape == (3, 20, 20, 20)
    assert torch.allclose(probs.sum(0), torch.ones(20, 20, 20), atol=1e-6)
    assert calls == [(3, 8), (6, 8), (8, 8)]
    assert net.training  # restored after the call


def test_clear_errors() -> None:
    class DeepSupervision(nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x, x[:, :, ::2, ::2, ::2]]

    image = torch.zeros(1, 16, 16, 16)
    with pytest.raises(InferenceError, match="deep supervision"):
        predict_logits(DeepSupervision(), image, (16, 16, 16))
    with pytest.raises(InferenceError, match="one more"):
        predict_logits(nn.Identity(), image[0, 0], (16, 16, 16))
    with pytest.raises(InferenceError, match="tile_batch"):
        predict_logits(nn.Identity(), image, (16, 16, 16), tile_batch=0)


def test_monai_tiling_and_map_are_not_nnunets() -> None:
    """Why medseg tiles by itself: MONAI's stride and Gaussian differ from nnU-Net's."""
    from monai.data.utils import compute_importance_map, dense_patch_slices

    monai_starts = sorted({s[0].start for s in dense_patch_slices((110,), (64,), (32,))})
    assert monai_starts == [0, 32, 46] and tile_starts((110,), (64,)) == [[0, 23, 46]]
    monai_map = compute_importance_map((32, 48, 48), "gaussian", 0.125)
    assert (monai_map - gaussian_importance((32, 48, 48))).abs().max() > 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_cpu(amp_dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(8, 3, 1))
    image = torch.randn(1, 40, 50, 45)
    kwargs = {"mirror_axes": (0, 1, 2), "tile_batch": 2}
    cpu = predict_logits(net, image, (32, 32, 32), **kwargs)
    gpu = predict_logits(net, image, (32, 32, 32), device="cuda", amp_dtype=amp_dtype, **kwargs)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    assert (gpu - cpu).abs().max() < 0.05
    assert (gpu.argmax(0) == cpu.argmax(0)).float().mean() > 0.97


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_out_of_memory_falls_back_to_cpu_accumulation(monkeypatch) -> None:
    from medseg.inference import sliding_window

    real = sliding_window._accumulate

    def fail_on_cuda(network, image, tiles, run, on):
        if on.type == "cuda":
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(network, image, tiles, run, on)

    monkeypatch.setattr(sliding_window, "_accumulate", fail_on_cuda)
    net = _identity(3)
    image = _one_hot((20, 24, 20))
    logits = predict_logits(net, image, (16, 16, 16), device="cuda", amp=False)
    assert torch.equal(logits, torch.from_numpy(image))


# --- parity with nnU-Net's predictor ----------------------------------------------------

PATCH = (32, 48, 48)


def _plain_unet(dim: int = 3) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    return PlainConvUNet(
        1,
        4,
        (8, 16, 32, 64),
        conv,
        3,
        (1, 2, 2, 2),
        2,
        3,
        1,
        conv_bias=True,
        norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    ).eval()


def _nnunet_logits(net, image, patch, mirror_axes, monkeypatch=None) -> torch.Tensor:
    """nnU-Net's sliding window; with ``monkeypatch``, its float16 accumulators made float32."""
    from nnunetv2.inference import predict_from_raw_data as pfrd
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    architecture = {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}
    configuration = {"patch_size": list(patch), "architecture": architecture}
    plans = PlansManager(
        {
            "dataset_name": "D",
            "plans_name": "P",
            "label_manager": "LabelManager",
            "configurations": {"c": configuration},
        }
    )
    predictor = pfrd.nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=bool(mirror_axes),
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2}}
    configuration = plans.get_configuration("c")
    axes = mirror_axes or None
    predictor.manual_initialization(net, plans, configuration, None, dataset_json, "t", axes)
    if monkeypatch is not None:

        class _Float32Torch:  # nnU-Net allocates its accumulators as torch.half
            half = torch.float32

            def __getattr__(self, name: str):
                return getattr(torch, name)

        monkeypatch.setattr(pfrd, "torch", _Float32Torch())
        monkeypatch.setattr(
            pfrd,
            "compute_gaussian",
            lambda *a, **k: compute_gaussian(*a, **{**k, "dtype": torch.float32}),
        )
    try:
        return predictor.predict_sliding_window_return_logits(torch.as_tensor(image)).float()
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()


@pytest.fixture(scope="module")
def case() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 45, 70, 61)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("mirror_axes", [(), (0, 1, 2)])
def test_parity_with_nnunet_predictor(case, mirror_axes, monkeypatch) -> None:
    net = _plain_unet()
    ours = predict_logits(net, case, PATCH, mirror_axes=mirror_axes, tile_batch=2)
    theirs = _nnunet_logits(net, case, PATCH, mirror_axes, monkeypatch)
    diff = (ours - theirs).abs().max().item()
    print(f"\nmirror {mirror_axes}: max |logit diff| vs nnU-Net (float32 accumulators) {diff:.2e}")
    assert diff < 1e-4
    assert torch.equal(ours.argmax(0), theirs.argmax(0))
    if not mirror_axes:  # softmax of the blended logits, as nnU-Net's apply_inference_nonlin
        probabilities = predict_probabilities(net, case, PATCH, tile_batch=2)
        assert torch.allclose(probabilities, theirs.softmax(0), atol=1e-5)

    # As shipped, nnU-Net blends in float16: rounding inside, and near the image corners
    # (where only tile corners with underflowing weights reach) errors up to about 0.5.
    stock = _nnunet_logits(net, case, PATCH, mirror_axes)
    interior = (ours - stock)[:, 8:-8, 8:-8, 8:-8].abs().max().item()
    overall = (ours - stock).abs().max().item()
    agree = (ours.argmax(0) == stock.argmax(0)).float().mean().item()
    print(
        f"vs stock nnU-Net (float16): max diff {overall:.2e}, at least 8 voxels inside "
        f"{interior:.2e}, argmax agree {agree:.4f}"
    )
    assert interior < 1e-2 and agree > 0.98


@pytest.mark.slow
def test_parity_2d_configuration(monkeypatch) -> None:
    net = _plain_unet(dim=2)
    image = np.random.default_rng(1).standard_normal((1, 3, 70, 61)).astype(np.float32)
    ours = predict_logits(net, image, (48, 48), mirror_axes=(0, 1))
    theirs = _nnunet_logits(net, image, (48, 48), (0, 1), monkeypatch)
    assert (ours - theirs).abs().max() < 1e-4
    assert torch.equal(ours.argmax(0), theirs.argmax(0))


@pytest.mark.slow
def test_monai_blending_agrees_where_its_tiles_are_nnunets(case) -> None:
    """For this shape MONAI's tiles coincide with nnU-Net's: with nnU-Net's map, it agrees."""
    from monai.inferers import sliding_window_inference

    net = _plain_unet()
    ours = predict_logits(net, case, PATCH)
    x = torch.from_numpy(case)[None]
    with torch.no_grad():
        same_map = sliding_window_inference(
            x, PATCH, 1, net, overlap=0.5, roi_weight_map=gaussian_importance(PATCH)
        )[0]
        own_map = sliding_window_inference(
            x, PATCH, 1, net, overlap=0.5, mode="gaussian", sigma_scale=0.125
        )[0]
    assert (same_map - ours).abs().max() < 1e-4
    changed = (own_map.argmax(0) != ours.argmax(0)).float().mean().item()
    print(
        f"\nMONAI's own Gaussian: max diff {(own_map - ours).abs().max():.3f}, "
        f"argmax differs at {changed:.2%} of voxels"
    )
