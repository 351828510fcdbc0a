"""``python -m sparse_deploy.gpu_check``: see :mod:`sparse_deploy.gpu_check.cli`."""

from .cli import main

raise SystemExit(main())
