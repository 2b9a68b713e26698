"""nst_det: Neuron Selectivity Transfer for classification and Detectron2 detection."""
from setuptools import find_packages, setup

setup(
    name="nst_det",
    version="0.1.0",
    description="Neuron Selectivity Transfer (arXiv 1707.01219) for ImageNet classification and "
    "Detectron2 Faster R-CNN detection",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists(
        "README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["nst_det", "nst_det.*"]),
    # Detectron2 is not on PyPI: install it first (README.md, "Install").
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore>=0.1.5,<0.1.6",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "Pillow>=7.1,<10",
        "setuptools<81",
        "tensorboard",
        "matplotlib",
        "scikit-learn",
    ],
    extras_require={"test": ["pytest"]},
)
