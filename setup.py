"""Package discovery that pyproject.toml cannot express on its own.

Two folders live at the top of the repository because the layout is the pipeline
(``passes/``) or because users open them by path (``topologies/``), but they install
inside shardc: ``passes/`` as ``shardc.passes`` and ``topologies/`` as ``shardc.stock``.
setuptools' ``packages.find`` only names folders after their place on disk, so the
packages are found under ``shardc/`` and the mapped ones added from ``PACKAGE_DIR``: a
new subpackage ships without anyone listing it. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

PACKAGE_DIR = {"shardc": "shardc", "shardc.passes": "passes", "shardc.stock": "topologies"}

setup(
    package_dir=PACKAGE_DIR,
    packages=sorted({*find_packages(include=["shardc", "shardc.*"]), *PACKAGE_DIR}),
)
