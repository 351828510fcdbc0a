"""``python -m sparse_deploy``: the ``sparse-deploy`` command (:mod:`sparse_deploy.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
