"""Package list only (everything else is in pyproject.toml): birder_exp* plus the Hydra configs of the
top-level conf/ folder, installed as birder_exp.conf (package-dir in pyproject.toml), and the sweeper's entry in
Hydra's ``hydra_plugins`` namespace package."""

from setuptools import find_packages
from setuptools import setup

setup(packages=[*find_packages(include=["birder_exp*"]), "birder_exp.conf", "hydra_plugins.birder_exp_sweeper"])
