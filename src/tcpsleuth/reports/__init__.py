"""Reports: render findings and command data; no detection logic here."""
