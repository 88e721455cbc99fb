# All metadata lives in pyproject.toml; this file only wires in the cffi build.
from setuptools import setup

setup(cffi_modules=["src/_ffi_build.py:ffibuilder"])
