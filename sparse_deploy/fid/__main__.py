"""``python -m sparse_deploy.fid``: see :mod:`sparse_deploy.fid.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
