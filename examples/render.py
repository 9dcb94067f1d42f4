"""Fill in the ``{{name}}`` placeholders of the web-server configs in ``examples/``.

    python examples/render.py examples/nginx/site.conf \\
        port=8080 prefix=/var/lib/myapp socket=/run/myapp/app.sock \\
        app_socket=/run/myapp/other.sock > /etc/nginx/myapp.conf

Each config names its placeholders in its header comment. The test suite
renders these same files (temporary paths, free ports) and runs the servers on
them, so what is here is what was tested. ``{{`` never occurs in nginx,
lighttpd, Apache, Caddy or h2o syntax, hence the delimiter.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["placeholders", "render", "render_file"]

PLACEHOLDER = re.compile(r"\{\{([a-z][a-z0-9_]*)\}\}")


def placeholders(text: str) -> set[str]:
    """The placeholder names used in ``text``."""
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: Mapping[str, object]) -> str:
    """Substitute every placeholder; a missing value is an error, not a blank."""
    missing = placeholders(text) - set(values)
    if missing:
        raise KeyError(f"no value for placeholder(s): {', '.join(sorted(missing))}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def render_file(path: str | Path, values: Mapping[str, object]) -> str:
    """Read a config template and render it."""
    return render(Path(path).read_text(), values)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    values = dict(arg.split("=", 1) for arg in argv[1:])
    try:
        sys.stdout.write(render_file(argv[0], values))
    except KeyError as exc:
        print(f"render.py: {exc.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
