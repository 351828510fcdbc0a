"""``python -m sparse_deploy.export``."""

from .cli import main

raise SystemExit(main())
