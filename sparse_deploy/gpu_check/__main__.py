"""``python -m sparse_deploy.gpu_check``: see :mod:`sparse_deploy.gpu_check.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
