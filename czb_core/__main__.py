"""`python -m czb_core` is the `czb` command line."""

from czb_core.cli import main

raise SystemExit(main())
