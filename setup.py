"""The metadata is in setup.cfg; this file only adds the cffi binding of liblxc's migrate(),
compiled at build time (needs gcc, lxc-dev and cffi to build, cffi alone to run)."""

from setuptools import setup

setup(cffi_modules=["lxdmig/backends/_liblxc_build.py:ffi"])
