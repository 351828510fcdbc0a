"""``python -m sparse_deploy.train``: training and sparse fine-tuning (:mod:`sparse_deploy.learn`).

The flags are :mod:`sparse_deploy.learn.cli`'s; the loop is :mod:`sparse_deploy.learn.train`.
Under torchrun: ``torchrun --nproc_per_node N -m sparse_deploy.train ...``.
"""

from .learn.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
