"""`python -m hfkd ...`, the `hfkd` command: what `accelerate launch -m hfkd cache-teacher ...` runs."""

from hfkd.app.cli import main

main()
