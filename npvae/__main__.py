"""``python -m npvae``: the command line (see :mod:`npvae.cli`)."""

from .cli import main

raise SystemExit(main())
