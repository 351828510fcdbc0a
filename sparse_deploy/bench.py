"""``python -m sparse_deploy.bench``: the measurement commands of :mod:`sparse_deploy.measure` (:mod:`.measure.cli`)."""

from .measure.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
