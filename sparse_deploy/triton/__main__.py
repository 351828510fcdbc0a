"""``python -m sparse_deploy.triton``: see :mod:`sparse_deploy.triton.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
