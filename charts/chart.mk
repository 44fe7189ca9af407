# Helm charts, their tests and the container images. Included by the top-level Makefile.
#   make chart-test   lint and render the charts, validate what they make, examples, Argo CD check
#   make images       docker build the operator, proxy and storage node images

PYENV ?= target/pyenv
# Where `make images` tags the images; charts/ramify's image.registry must say the same.
REGISTRY ?= ghcr.io/ramify
# The chart runs the images of its appVersion unless image.tag says otherwise.
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/ramify/Chart.yaml)
DOCKER ?= docker

.PHONY: python-deps chart-test images

python-deps:
	@bash scripts/install-python-deps.sh

chart-test: python-deps
	$(PYENV)/bin/python -m pytest charts/tests -q

# <Dockerfile>:<image name>
RAMIFY_IMAGES := operator/Dockerfile:ramify-operator proxy/Dockerfile:ramify-proxy storage-node/Dockerfile:ramify-storage

images:
	@if ! $(DOCKER) info >/dev/null 2>&1; then \
	  echo "error: no Docker engine answers here ('$(DOCKER) info' fails), so 'make images' cannot build." >&2; \
	  echo "       On a machine with Docker, rerun it there. For the project's test cluster, 'make cluster-images'" >&2; \
	  echo "       builds the same images without Docker and imports them as ramify.test/<name>:dev." >&2; \
	  exit 1; \
	fi
	@set -e; for pair in $(RAMIFY_IMAGES); do \
	  file=$${pair%%:*}; name=$${pair#*:}; \
	  echo "==> $(REGISTRY)/$$name:$(IMAGE_TAG) from $$file"; \
	  $(DOCKER) build -f $$file -t $(REGISTRY)/$$name:$(IMAGE_TAG) .; \
	done
