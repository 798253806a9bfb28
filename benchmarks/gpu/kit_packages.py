"""What the GPU kit carries: the Python packages the lent GPU machine lacks, and no more.

The lent machine (``nvidia-h200``, see ``/work/.library/device/KINDS.md``) runs CPython
3.12 with torch 2.11 (CUDA), numpy, scipy, scikit-image, pandas, matplotlib, ... and has
no package registry. Everything medseg's and nnU-Net's training and prediction import
that it lacks travels as wheels (``make gpu-kit``), installed there with ``--no-deps``
so that its torch and numpy stay. Two packages are imported but never used on the paths
the kit runs (Hippocampus 3d_fullres, no cascade, no file export through SimpleITK), and
are replaced there by stubs that fail loudly when used instead of being carried
(``stubs/``): SimpleITK (about 50 MB a wheel; nnunetv2 imports it at module level) and
connected-components-3d (5 MB a Python version; acvl_utils imports it for nnU-Net's
cascade augmentation).

This module is data: ``build_kit.py`` downloads :data:`KIT_PACKAGES` at the versions
installed in the running interpreter, ``device_like.py`` blocks everything else for a
device-like dry run, and ``tests/test_gpu_kit.py`` checks the lists against each other.
"""

from __future__ import annotations

import re

#: Python versions the binary wheels are fetched for (3.12 seen there in 2026-11; 3.11
#: in case the image goes back), and the platform tags pip may match for them.
DEVICE_PYTHONS = ("3.11", "3.12")
DEVICE_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)

#: Distributions installed on the GPU machine's image, as KINDS.md lists them
#: (read 2026-11-17). Never carried: the kit must not replace torch or numpy there.
DEVICE_PACKAGES = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub
    humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
    markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy
    numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
    nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
    packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
    sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
    urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
    """.split()
)

#: Pure-Python distributions the device runs import and the machine lacks.
PURE_PACKAGES = (
    "nnunetv2",  # the reference trainer and predictor
    "dynamic_network_architectures",  # the U-Net both build from the plans
    "batchgenerators",  # nnU-Net's data loader and augmenter processes
    "batchgeneratorsv2",  # nnU-Net's training transforms
    "acvl_utils",  # nnU-Net's helpers (crop, pad); an sdist only: a wheel is built here
    "monai",  # medseg's Dice + CE loss, and the sliding-window tests
    "nibabel",  # medseg's geometry; nnunetv2's NibabelIOWithReorient (the kit's plans)
)

#: Binary distributions the device runs import and the machine lacks: blosc2 (both
#: tools' preprocessed store) and what it imports.
BINARY_PACKAGES = ("blosc2", "ndindex", "numexpr")

KIT_PACKAGES = PURE_PACKAGES + BINARY_PACKAGES

#: Imported (module name -> distribution) but unused on the kit's paths: stubbed there.
STUBBED = {"SimpleITK": "simpleitk", "cc3d": "connected-components-3d"}


def normalize(name: str) -> str:
    """A distribution name in PEP 503 form (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()
