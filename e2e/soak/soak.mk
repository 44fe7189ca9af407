# The soak test, not part of `make test`: a random schedule of branch operations and of
# SIGKILLs of the local daemon and of computes, with a bank-transfer workload on the roots
# and every branch checked after every step (e2e/soak/soak.py says what is checked).
# Included by the top-level Makefile. Root (local mode on a loop-mounted XFS image).
#   make soak                       10 minutes
#   make soak SOAK_MINUTES=60       longer
#   make soak SOAK_SEED=1234        the schedule of an earlier run (its first output line)
#   make soak SOAK_SKIP=kill-during leave operations out, to get past a known fault

.PHONY: soak

soak: deps python-deps
	$(CARGO) build -p ramify-cli
	SOAK_MINUTES="$(SOAK_MINUTES)" SOAK_SEED="$(SOAK_SEED)" SOAK_SKIP="$(SOAK_SKIP)" $(PYENV)/bin/python e2e/soak/soak.py target/debug/ramify
