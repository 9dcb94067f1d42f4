"""Serve ``apps.wsgi`` with flup's threaded FastCGI WSGIServer (it has no command line).

python flup_serve.py SOCKET_PATH
"""

from __future__ import annotations

import sys

import apps
from flup.server.fcgi import WSGIServer

if __name__ == "__main__":
    # umask 0: a socket any nginx worker user can connect to.
    WSGIServer(apps.wsgi, bindAddress=sys.argv[1], umask=0).run()
