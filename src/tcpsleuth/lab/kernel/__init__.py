"""Real guest kernels for the lab: built from Debian's source with and without the
SYN-cookie window-scale fix (``build``), booted under QEMU by virtme-ng (``guest``)."""
