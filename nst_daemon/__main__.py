"""`python -m nst_daemon`: the `nstd` command, from whichever checkout is on the path."""

from nst_daemon.cli import main

main()
