"""`python -m study.certified`: see study.certified.cli."""

from study.certified.cli import main

raise SystemExit(main())
