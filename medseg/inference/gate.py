"""The sanity gate every new scan passes before a model sees it.

One place, used by ``medseg predict`` (single scans and batches) and everything
built on it (the workflow's test prediction, the DICOM service), so that no
prediction is ever made on an input that cannot give a meaningful one.

Refused (the case fails with the reason; a batch goes on):

* the image's own problems (:func:`medseg.core.sanity.image_findings`): NaN or
  infinite voxels, no intensity variation, a single slice;
* header geometry that is ambiguous (:func:`medseg.io.volumes.header_findings`:
  sform and qform disagreeing, a non-positive voxel size);
* a channel count other than the model's;
* a DICOM modality the model was clearly not trained on (a CT model given MR);
* (when predicted) a volume whose estimated peak memory exceeds ``--max-memory``
  with every setting (:mod:`medseg.inference.memory`).

Recorded as warnings beside the result: a voxel size far (more than
:data:`SPACING_FACTOR` times) from the model's training median on some axis, and
header warnings such as a missing orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medseg.core.errors import InputRefusedError
from medseg.core.plans import Plans
from medseg.core.sanity import Finding, image_findings, refusals, warnings_of
from medseg.core.volume import Volume
from medseg.preprocessing.grid import processing_spacing

#: Spacing this many times coarser or finer than the training median gets a warning.
SPACING_FACTOR = 3.0
#: Channel names that mean "this model expects CT" / "expects MR".
CT_NAMES = {"ct"}
MR_NAMES = {"mr", "mri", "t1", "t1w", "t1gd", "t1ce", "t2", "t2w", "flair", "adc", "dwi", "pd"}
#: Processing-grid axis names when volumes are reoriented to RAS (axes reversed).
_AXES = ("S (cranio-caudal)", "A (anterior-posterior)", "R (left-right)")


def channel_findings(n_channels: int, channel_names: Sequence[str]) -> list[Finding]:
    """The image must have exactly the model's channels."""
    if n_channels == len(channel_names):
        return []
    return [
        Finding(
            "channels",
            (
                f"the model expects {len(channel_names)} channel(s) ({', '.join(channel_names)}), "
                f"the input has {n_channels}; give one image with the model's channels, in its "
                "order"
            ),
        )
    ]


def modality_findings(modality: str | None, channel_names: Sequence[str]) -> list[Finding]:
    """A DICOM series of a modality the model was clearly not trained on."""
    names = {n.casefold() for n in channel_names}
    for wanted, expected in (("CT", CT_NAMES), ("MR", MR_NAMES)):
        if names & expected and modality and modality != wanted:
            return [
                Finding(
                    "modality",
                    (f"wrong modality: the model expects {wanted}, this series is {modality}"),
                )
            ]
    return []


def spacing_findings(image: Volume, plans: Plans) -> list[Finding]:
    """Axes whose voxel size is far from the model's training median (warnings)."""
    median = plans.median_spacing
    if not median:
        return []
    forward, reorient = plans.transpose_forward, plans.reorients
    spacing = processing_spacing(image.affine, reorient)
    found = []
    spacing = [spacing[a] for a in forward]
    for axis, (have, trained) in enumerate(zip(spacing, median, strict=False)):
        ratio = have / float(trained)
        if max(ratio, 1 / ratio) > SPACING_FACTOR:
            name = _AXES[forward[axis]] if reorient else f"axis {forward[axis]}"
            found.append(
                Finding(
                    "spacing",
                    (
                        f"voxel size {have:.3g} mm along {name} is {ratio:.2g}x the model's "
                        f"training median ({float(trained):.3g} mm); the model may segment this "
                        "scan poorly"
                    ),
                    refuse=False,
                )
            )
    return found


@dataclass(frozen=True)
class ModelFacts:
    """What the gate needs to know about a model: its plans, channels, classes and the
    configurations it runs (for the resampled size of a scan)."""

    plans: Plans
    channel_names: tuple[str, ...]
    n_classes: int
    configurations: tuple[str, ...]

    @classmethod
    def of(cls, bundle) -> ModelFacts:
        """The facts of a loaded :class:`~medseg.inference.bundle.ModelBundle`."""
        names = []
        for member in bundle.members:
            while member is not None:
                names.append(member.configuration)
                member = member.previous
        return cls(bundle.plans, tuple(bundle.channel_names), len(bundle.labels), tuple(names))


def _trained_on_slices(plans: Plans) -> bool:
    """Whether the model was trained on single-slice images (then one slice is fine)."""
    return 1 in (plans.median_shape or ())


def scan_findings(
    image: Volume,
    facts: ModelFacts,
    *,
    header: Sequence[Finding] = (),
    modality: str | None = None,
) -> list[Finding]:
    """Everything wrong or doubtful about ``image`` as an input to the model of ``facts``.

    ``header`` are the input file's header findings; ``modality`` the DICOM
    modality (None for files). Whether the case fits in memory is decided by the
    memory plan when it is predicted (:mod:`medseg.inference.memory`, ``--max-memory``),
    which knows the settings.
    """
    found = list(header)
    found += [
        f
        for f in image_findings(image)
        if not (f.code == "single_slice" and _trained_on_slices(facts.plans))
    ]
    found += channel_findings(image.n_channels, facts.channel_names)
    found += modality_findings(modality, facts.channel_names)
    if refusals(found):
        return found  # no spacing facts about an image that cannot be used
    found += spacing_findings(image, facts.plans)
    return found


def enforce(findings: Sequence[Finding], where: str = "") -> list[Finding]:
    """Raise :class:`InputRefusedError` naming every refusal (each message prefixed with
    ``where``, the input's path, unless it names it already); otherwise return the warnings."""
    refused = refusals(findings)
    if refused:
        named = (
            [f.message if f.message.startswith(where) else f"{where}: {f.message}" for f in refused]
            if where
            else [f.message for f in refused]
        )
        raise InputRefusedError("; ".join(named))
    return warnings_of(findings)
