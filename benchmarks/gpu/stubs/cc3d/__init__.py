"""Stand-in for connected-components-3d on the lent GPU machine (``../../kit_packages.py``).

acvl_utils imports cc3d at module level for nnU-Net's cascade augmentation, which the
kit's runs (Hippocampus 3d_fullres) never use. Any use fails loudly.
"""


def __getattr__(name: str):
    if name.startswith("__"):  # probes such as __wrapped__ or __path__: plainly absent
        raise AttributeError(name)
    raise ImportError(
        f"cc3d.{name}: connected-components-3d is not installed on this machine and the GPU "
        "kit carries only a stub (benchmarks/gpu/stubs); add it to the kit to use it"
    )
