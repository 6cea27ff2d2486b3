"""``python -m kbench`` runs the command-line interface."""

from kbench.commands.cli import main

raise SystemExit(main())
