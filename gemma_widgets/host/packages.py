"""Optional packages: whether one is installed, its pip name, and whether its declared needs are met."""

from __future__ import annotations

import functools
import importlib.util
from importlib import metadata

from packaging.requirements import Requirement

#: Import name -> pip name, where they differ.
PIP_NAMES = {"optimum.intel": "optimum-intel", "openvino_genai": "openvino-genai",
             "openvino_tokenizers": "openvino-tokenizers", "llama_cpp": "llama-cpp-python"}

#: How to install a package the kit names as an extra of its own.
INSTALL = {"llama_cpp": "'gemma_widgets[llamacpp]'"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package (e.g. optimum) is missing
        return False


def missing(*modules: str) -> str | None:
    """Why the first of ``modules`` that is not installed is missing, with the pip command; None if all are."""
    for module in modules:
        if not installed(module):
            package = PIP_NAMES.get(module, module)
            return f"the package {package} is not installed (pip install {INSTALL.get(module, package)})"
    return None


@functools.cache
def unmet_requirement(dist: str) -> str | None:
    """The first of ``dist``'s declared requirements that the installed packages do not meet.

    optimum-intel imports (lazily) only beside the transformers releases it declares, so a
    mismatch is named here instead of failing deep inside an export.
    """
    for line in metadata.requires(dist) or ():
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            return f"{dist} needs {requirement.name}, which is not installed"
        if not requirement.specifier.contains(version, prereleases=True):
            return (f"{dist} {metadata.version(dist)} needs {requirement.name}{requirement.specifier} "
                    f"and {version} is installed")
    return None
