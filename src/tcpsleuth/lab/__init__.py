"""The lab: reproduce TCP failures in network namespaces on one machine."""
