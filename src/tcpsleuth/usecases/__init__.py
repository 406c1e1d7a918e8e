"""Use cases that several commands share: sources, detectors and reports wired for one
job, with the options already checked by cli/."""
