"""Packaging: the metadata is in setup.cfg; this file only adds the shipped default model.

The model stays at ``models/rdeic-small`` in the repository (trained models are written there) and
is installed as the package data ``rdeic_codec/default_model/``, so that a wheel carries it and
``rdeic`` works without a checkout (rdeic_codec.model.default_model_dir).
"""

from setuptools import find_packages, setup

MODEL_PACKAGE = "rdeic_codec.default_model"

setup(
    packages=find_packages(include=["rdeic_codec", "rdeic_codec.*"]) + [MODEL_PACKAGE],
    package_dir={MODEL_PACKAGE: "models/rdeic-small"},
    package_data={
        "rdeic_codec.evaluation": ["data/*.npz", "data/*.md"],
        MODEL_PACKAGE: ["config.json", "*.safetensors", "README.md"],
    },
)
