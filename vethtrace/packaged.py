"""Data files shipped inside the vethtrace package: the probes' C sources
(vethtrace/probes/) and the lab scenarios (vethtrace/lab/scenarios/).

Why through importlib.resources and not a path relative to the checkout: an
installed wheel has no checkout around it, only the package directory (the
files are package data, see pyproject.toml). A wheel installed by pip lives
unpacked on disk, so the resource is a real directory that bcc's compiler
(which reads #include files itself) and `glob` can use; a zipped install,
which pip never makes, is refused with one clear line rather than half-working.
For a package on disk resources.files() is the directory of this file, so
that is looked at first: importlib.resources costs ~3 ms of imports at every
start of `trace` (issue #18).
"""

from __future__ import annotations

from pathlib import Path


def packaged(*parts: str) -> Path:
    """The directory or file `parts` below the vethtrace package, as a real path."""
    beside = Path(__file__).parent.joinpath(*parts)
    if beside.exists():  # a checkout or an unpacked wheel: what resources would answer
        return beside
    from importlib import resources  # here: ~3 ms of imports (tempfile...) most runs skip

    found = resources.files("vethtrace").joinpath(*parts)
    if not isinstance(found, Path):
        raise RuntimeError(f"vethtrace/{'/'.join(parts)} is not on the file system ({found})")
    return found
