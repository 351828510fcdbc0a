"""``python -m sparse_deploy.export``: see :mod:`sparse_deploy.export.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
