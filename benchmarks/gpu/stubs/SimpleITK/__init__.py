"""Stand-in for SimpleITK on the lent GPU machine (see ``../../kit_packages.py``).

nnunetv2 imports SimpleITK at module level, but the kit's runs never call it (the
kit's plans read and write NIfTI with nibabel). Any use fails loudly.
"""


def __getattr__(name: str):
    if name.startswith("__"):  # probes such as __wrapped__ or __path__: plainly absent
        raise AttributeError(name)
    raise ImportError(
        f"SimpleITK.{name}: SimpleITK is not installed on this machine and the GPU kit "
        "carries only a stub (benchmarks/gpu/stubs); add it to the kit to use it"
    )
