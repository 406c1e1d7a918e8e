"""Kernel tracing sources (bpftrace programs kept as readable text beside their runner)."""
