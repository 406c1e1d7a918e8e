"""Sources: turn the outside world (procfs, netlink, tool output, files) into records."""
