// Small helpers of the test cluster, standard library only so they build without
// fetching anything: mkoci (OCI image archives without Docker), pause (the sandbox
// image) and dnsprobe (the "DNS answers" check).
module ramify.dev/e2e/cluster/tools

go 1.22
