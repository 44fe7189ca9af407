# The test cluster: a single-node Kubernetes built from Kubernetes' own Go modules and
# Debian's containerd, running on this machine (see e2e/cluster/README.md).
#   make cluster-build    build the Kubernetes, etcd and CoreDNS binaries (installs Debian packages)
#   make cluster-images   build the Ramify release binaries and every image; import them if the cluster is up
#   make cluster-up       start the cluster; prints the KUBECONFIG to export
#   make cluster-down     stop it and remove every trace (ends with cluster-check-clean)
#   make cluster-check-clean   fail if anything of a cluster is left on the machine
#   make cluster-smoke    Pods, the compute image, XFS reflinks on a running cluster
#   make cluster-test     up/smoke/down, plus failed, interrupted and killed ups, each checked clean

CLUSTER_DIR_SRC := e2e/cluster

.PHONY: cluster-build cluster-images cluster-up cluster-down cluster-check-clean cluster-smoke cluster-test

cluster-build:
	bash $(CLUSTER_DIR_SRC)/build.sh

cluster-images: cluster-build
	CARGO="$(CARGO)" bash $(CLUSTER_DIR_SRC)/images.sh --cargo

cluster-up: cluster-build
	bash $(CLUSTER_DIR_SRC)/up.sh

cluster-down:
	bash $(CLUSTER_DIR_SRC)/down.sh

cluster-check-clean:
	bash $(CLUSTER_DIR_SRC)/check-clean.sh

cluster-smoke:
	bash $(CLUSTER_DIR_SRC)/smoke.sh

cluster-test: cluster-build
	bash $(CLUSTER_DIR_SRC)/images.sh --no-import postgres
	bash $(CLUSTER_DIR_SRC)/test-cluster.sh
