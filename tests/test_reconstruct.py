"""Slab-wise reconstruction: bit-identical resampling, and labels independent of the slab."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.core.volume import Volume
from medseg.inference.predict import probabilities_on_original_grid
from medseg.inference.reconstruct import MemberLogits, reconstruct
from medseg.inference.slab_resample import resample_slab
from medseg.io.probabilities import load_probabilities
from medseg.preprocessing.pipeline import preprocess_case
from medseg.preprocessing.resample import compute_new_shape, resample_probabilities

RESAMPLINGS = [  # (logits shape, spacing of the logits, original spacing)
    ((3, 13, 17, 11), (1.0, 1.0, 1.0), (0.5, 0.7, 0.9)),  # 3D, up
    ((2, 40, 31, 27), (0.5, 0.6, 0.7), (1.1, 0.5, 1.9)),  # 3D, up and down
    ((2, 10, 30, 28), (3.0, 0.8, 0.8), (1.25, 0.7, 0.7)),  # separate axis 0
    ((2, 30, 10, 28), (0.8, 3.0, 0.8), (0.7, 1.0, 0.7)),  # separate axis 1
    ((2, 12, 30, 28), (1.25, 0.7, 0.7), (5.0, 0.9, 0.9)),  # separate, down along it
    ((2, 20, 18, 16), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),  # unchanged
]


@pytest.mark.parametrize("shape,current,original", RESAMPLINGS)
def test_any_slab_equals_the_whole_volume_bit_for_bit(shape, current, original):
    logits = (np.random.default_rng(0).normal(size=shape) * 5).astype(np.float32)
    out = compute_new_shape(shape[1:], current, original)
    whole = resample_probabilities(logits, out, current, original)
    for axis in range(3):
        for thickness in (1, 4, out[axis]):
            parts = [
                resample_slab(
                    logits, out, current, original, axis, s, min(s + thickness, out[axis])
                )
                for s in range(0, out[axis], thickness)
            ]
            assert np.array_equal(np.concatenate(parts, axis=axis + 1), whole), (axis, thickness)


def _case(affine, spacing_after, n_classes=4, seed=0):
    """A member's logits and record for an image with ``affine`` preprocessed to
    ``spacing_after`` (the record of the real preprocessing of that image)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((1, 30, 26, 14), np.float32)
    image[0, 3:27, 2:24, 1:13] = rng.normal(size=(24, 22, 12)) + 3  # a crop box inside
    plans = {
        "configurations": {
            "c": {
                "spacing": list(spacing_after),
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "patch_size": [8, 8, 8],
                "batch_size": 2,
                "architecture": {},
            }
        },
        "transpose_forward": [0, 2, 1],
        "transpose_backward": [0, 2, 1],
        "foreground_intensity_properties_per_channel": {},
        "labels": [[0, "background"], *([k, f"c{k}"] for k in range(1, n_classes))],
        "channel_names": {"0": "CT"},
    }
    from medseg.core.plans import Plans

    _, _, record = preprocess_case(Volume.image(image, affine), None, Plans.of(plans), "c")
    smooth = rng.normal(size=(n_classes, *record["shape"])).cumsum(axis=1).astype(np.float32)
    return MemberLogits(smooth, record), image


AFFINES = {
    "ras": np.diag([0.8, 0.9, 2.5, 1.0]),
    "lps": np.array(
        [[-0.8, 0, 0, 10.0], [0, 0, 2.5, -3.0], [0, -0.9, 0, 5.0], [0, 0, 0, 1]]
    ),  # flipped and permuted axes
}


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("spacing", [(1.3, 1.1, 1.2), (2.5, 0.5, 0.5)], ids=["3d", "sepz"])
def test_labels_do_not_depend_on_the_slab(name, spacing, tmp_path):
    member, _ = _case(AFFINES[name], spacing)
    one = reconstruct([member], slab_bytes=2**40)  # one slab holds everything
    thin = reconstruct([member], slab_bytes=1)  # one slice per slab
    assert np.array_equal(thin.array, one.array) and np.array_equal(thin.affine, one.affine)
    # the same labels as the whole-volume probabilities of the previous path
    full = probabilities_on_original_grid(member.logits, member.record)
    assert full.array.shape[1:] == one.array.shape
    assert np.mean(full.array.argmax(0) == one.array) > 0.999
    # probabilities written slab by slab are the whole-volume ones, in original axes
    path = tmp_path / "p.b2nd"
    labels = reconstruct([member], slab_bytes=3000, probabilities=path)
    probs, affine = load_probabilities(path)
    assert np.array_equal(affine, AFFINES[name]) and np.array_equal(labels.array, one.array)
    assert np.allclose(probs, full.array, atol=1e-3)


@pytest.mark.parametrize("spacing", [(1.3, 1.1, 1.2), (2.5, 0.5, 0.5)], ids=["3d", "sepz"])
def test_ensemble_labels_do_not_depend_on_the_slab(spacing):
    a, _ = _case(AFFINES["lps"], spacing, seed=1)
    b, _ = _case(AFFINES["lps"], (1.0, 1.0, 1.0), seed=2)
    one = reconstruct([a, b], slab_bytes=2**40)
    for slab_bytes in (1, 5000):
        assert np.array_equal(reconstruct([a, b], slab_bytes=slab_bytes).array, one.array)
    pa = probabilities_on_original_grid(a.logits, a.record).array
    pb = probabilities_on_original_grid(b.logits, b.record).array
    assert np.mean(((pa + pb) / 2).argmax(0) == one.array) > 0.999


@pytest.mark.parametrize("spacing", [(1.3, 1.1, 1.2), (2.5, 0.5, 0.5)], ids=["3d", "sepz"])
def test_logits_on_the_device_give_the_same_labels(spacing, tmp_path):
    """Logits held as a torch tensor (on a GPU in predict) are resampled and argmaxed by
    torch on their device: labels independent of the slab, and equal to the numpy
    path's up to float32 rounding (>= 99.99% of voxels)."""
    a, _ = _case(AFFINES["lps"], spacing, seed=3)
    b, _ = _case(AFFINES["lps"], (1.0, 1.0, 1.0), seed=4)
    device = [MemberLogits(torch.from_numpy(m.logits), m.record) for m in (a, b)]
    for members, on_device in (([a], device[:1]), ([a, b], device)):
        host = reconstruct(members).array
        one = reconstruct(on_device, slab_bytes=2**40).array
        assert np.array_equal(reconstruct(on_device, slab_bytes=1).array, one)
        assert np.mean(one == host) >= 0.9999
    path = tmp_path / "p.b2nd"
    reconstruct(device, slab_bytes=5000, probabilities=path)
    probs = load_probabilities(path)[0]
    reconstruct([a, b], probabilities=tmp_path / "q.b2nd")
    assert np.allclose(probs, load_probabilities(tmp_path / "q.b2nd")[0], atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_reconstruction_matches_the_cpu():
    member, _ = _case(AFFINES["lps"], (2.5, 0.5, 0.5), n_classes=20, seed=5)
    on_gpu = MemberLogits(torch.from_numpy(member.logits).cuda(), member.record)
    assert np.mean(reconstruct([on_gpu]).array == reconstruct([member]).array) >= 0.9999
