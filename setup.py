"""What pyproject.toml cannot say: configs/ (top level of the repository) ships inside the package.

The YAML configs live at the repository's top level, where users look for them, and are installed as
``focus_surgery/configs/`` so that ``YOLO("yolov8n-spd.yaml")`` finds them by name from an installed package
(``focus_surgery.model_configs``). Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["focus_surgery", "focus_surgery.*"]), "focus_surgery.configs"],
    package_dir={"focus_surgery.configs": "configs"},
    package_data={"focus_surgery": ["py.typed"], "focus_surgery.configs": ["*.yaml", "README.md"]},
)
