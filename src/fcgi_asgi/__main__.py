"""``python -m fcgi_asgi``: the same as the ``fcgi-asgi`` command."""

import sys

from .cli import main

sys.exit(main())
