"""`python -m tokenlat_cli` is the `tokenlat` command."""

from tokenlat_cli.entry import main

main()
