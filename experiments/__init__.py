"""Research probes of the toy world (the teachers' force along a known motion, how much a spin
shows, how far an asset turns). Run from the repository root, e.g.
``python -m experiments.toy_force --asset RUN/stage1.ayg --prompt "a red cube spinning"``."""
