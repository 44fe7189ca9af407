"""The restricted-profile check itself: it passes a compliant Pod and names each control
a Pod breaks, so a chart that passes it passes for a reason."""

from __future__ import annotations

import copy

import pytest

from pod_security import restricted_violations

COMPLIANT = {
    "metadata": {"labels": {"app": "x"}},
    "spec": {
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [{
            "name": "init", "image": "busybox",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }],
        "containers": [{
            "name": "app", "image": "busybox",
            "ports": [{"containerPort": 8080}],
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
        }],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "token", "projected": {"sources": []}},
        ],
    },
}


def test_a_compliant_pod_passes():
    assert restricted_violations(COMPLIANT) == []


def test_container_level_settings_are_enough():
    """runAsNonRoot and seccomp may be set on every container instead of the Pod."""
    pod = copy.deepcopy(COMPLIANT)
    del pod["spec"]["securityContext"]
    for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        c["securityContext"]["runAsNonRoot"] = True
        c["securityContext"]["seccompProfile"] = {"type": "Localhost", "localhostProfile": "p.json"}
    assert restricted_violations(pod) == []


def set_path(obj, path, value):
    *parents, last = path
    for key in parents:
        obj = obj[key]
    if value is DELETE:
        del obj[last]
    else:
        obj[last] = value


DELETE = object()
APP_SC = ("spec", "containers", 0, "securityContext")
INIT_SC = ("spec", "initContainers", 0, "securityContext")


@pytest.mark.parametrize("path, value, control", [
    (("spec", "hostNetwork"), True, "host namespaces"),
    (("spec", "hostPID"), True, "host namespaces"),
    (("spec", "volumes", 0), {"name": "tmp", "hostPath": {"path": "/"}}, "hostPath volumes"),
    (("spec", "volumes", 0), {"name": "tmp", "nfs": {"server": "n", "path": "/"}}, "volume types"),
    (("spec", "containers", 0, "ports", 0, "hostPort"), 8080, "host ports"),
    (APP_SC + ("privileged",), True, "privileged"),
    (APP_SC + ("allowPrivilegeEscalation",), DELETE, "privilege escalation"),
    (INIT_SC + ("allowPrivilegeEscalation",), True, "privilege escalation"),
    (("spec", "securityContext", "runAsNonRoot"), DELETE, "running as non-root"),
    (APP_SC + ("runAsNonRoot",), False, "running as non-root"),
    (("spec", "securityContext", "runAsUser"), 0, "running as non-root user"),
    (APP_SC + ("runAsUser",), 0, "running as non-root user"),
    (("spec", "securityContext", "seccompProfile"), DELETE, "seccomp"),
    (("spec", "securityContext", "seccompProfile"), {"type": "Unconfined"}, "seccomp"),
    (APP_SC + ("seccompProfile",), {"type": "Unconfined"}, "seccomp"),
    (APP_SC + ("capabilities", "drop"), ["NET_RAW"], "capabilities"),
    (INIT_SC + ("capabilities",), DELETE, "capabilities"),
    (APP_SC + ("capabilities", "add"), ["CHOWN"], "capabilities (restricted)"),
    (APP_SC + ("capabilities", "add"), ["SYS_ADMIN"], "capabilities (baseline)"),
    (APP_SC + ("procMount",), "Unmasked", "/proc mount type"),
    (("spec", "securityContext", "sysctls"), [{"name": "kernel.msgmax", "value": "1"}], "sysctls"),
    (("spec", "securityContext", "seLinuxOptions"), {"type": "spc_t"}, "SELinux"),
    (APP_SC + ("appArmorProfile",), {"type": "Unconfined"}, "AppArmor"),
    (("metadata", "annotations"), {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}, "AppArmor"),
])
def test_each_violation_is_named(path, value, control):
    pod = copy.deepcopy(COMPLIANT)
    set_path(pod, path, value)
    found = restricted_violations(pod)
    assert found, f"{path} = {value!r} went unnoticed"
    assert any(f.startswith(control) for f in found), found
