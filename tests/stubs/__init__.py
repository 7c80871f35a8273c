"""Stand-ins for tools that cannot run on the test machine (parallel launchers, a PBS Pro server)."""
