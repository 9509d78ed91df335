"""Build hook: compiles the uAPI declarations into ``pyvfio._uapi``."""

from setuptools import setup

setup(cffi_modules=["cdefs/build_uapi.py:ffibuilder"])
