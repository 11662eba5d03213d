"""Builds the optional C speed-ups; everything else about the distribution is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[
    # The dpkg reader's stanza scan and list stats (dpkg.py has the same in pure Python, for a host without a
    # C compiler: optional=True lets the install go on without it).
    Extension("actors.datasets.package._dpkg_native", ["actors/datasets/package/_dpkg_native.c"],
              optional=True, extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]),
    # One wake-up of the process-events reader (capture.py has the same in pure Python, used without it).
    Extension("actors.datasets.process._capture_native", ["actors/datasets/process/_capture_native.c"],
              optional=True, extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]),
])
