"""Builds the optional C speedups; everything else is in pyproject.toml.

The extension is optional: without a compiler (or with FCGI_ASGI_NO_EXTENSIONS=1)
the install goes on and the gateway uses its pure-Python codec.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("FCGI_ASGI_NO_EXTENSIONS"):
    ext_modules.append(
        Extension("fcgi_asgi._speedups", ["src/fcgi_asgi/_speedups.c"], optional=True)
    )

setup(ext_modules=ext_modules)
