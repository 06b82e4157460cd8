"""`python -m antnest`: the same as the `antnest` command."""
from antnest.cli import main

raise SystemExit(main())
