"""Package layout for setuptools.

One distribution, one namespace (``legacygpu``), five source roots: ``core/``
(shared core and CLI), ``worker/``, ``api/``, ``operator/`` and ``testing/`` (the
API server and node stand-ins for tests and benchmarks, in no image). None of those
folders is itself a package, so nothing run from the repository root can shadow
the standard library's ``operator`` module. Images install only the roots they
need (see the Dockerfiles); everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

ROOTS = ("core", "worker", "api", "operator", "testing")

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in (r for r in ROOTS if Path(r).is_dir()):  # an image copies only the roots it needs
    for package in find_namespace_packages(where=root, include=["legacygpu.*"]):
        packages.append(package)
        package_dir[package] = f"{root}/{package.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
