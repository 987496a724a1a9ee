"""Run the command line as ``python -m ApplePerturbLib``."""

from ApplePerturbLib.cli import main

raise SystemExit(main())
