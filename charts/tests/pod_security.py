"""The Pod Security Standards' `restricted` profile as a function of a Pod template.

Written from the controls of https://kubernetes.io/docs/concepts/security/pod-security-standards/
(baseline and restricted), for the latest policy version. Each finding names the control
and the field, like the Pod Security admission controller's own warnings.
"""

from __future__ import annotations

from typing import Any

# Baseline, "Capabilities": what a container may add...
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
# ...and restricted narrows it to this one.
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}

# Baseline, "Sysctls": the safe set.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}

# Baseline, "SELinux": the types a Pod may ask for.
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}

# Restricted, "Volume Types": nothing that reaches the node's own storage or network
# filesystems directly.
RESTRICTED_VOLUME_SOURCES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}

APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _apparmor_ok(profile: dict[str, Any] | None) -> bool:
    return profile is None or profile.get("type") in (None, "RuntimeDefault", "Localhost")


def _seccomp_ok(profile: dict[str, Any] | None) -> bool:
    return profile is not None and profile.get("type") in ("RuntimeDefault", "Localhost")


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """Every way the Pod described by `template` ({metadata, spec}) breaks the restricted
    profile; empty when it passes."""
    found: list[str] = []
    meta = template.get("metadata") or {}
    spec = template["spec"]
    pod_sc = spec.get("securityContext") or {}

    containers = [("containers", c) for c in spec.get("containers") or []]
    containers += [("initContainers", c) for c in spec.get("initContainers") or []]
    containers += [("ephemeralContainers", c) for c in spec.get("ephemeralContainers") or []]

    # --- baseline ---
    for ns in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(ns):
            found.append(f"host namespaces: spec.{ns} is true")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("HostProcess: spec.securityContext.windowsOptions.hostProcess is true")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"hostPath volumes: volume {volume['name']} is a hostPath")
    if not _apparmor_ok(pod_sc.get("appArmorProfile")):
        found.append("AppArmor: spec.securityContext.appArmorProfile.type is Unconfined")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"AppArmor: annotation {key}={value}")
    se = pod_sc.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
        found.append("SELinux: spec.securityContext.seLinuxOptions is not allowed")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctls: {sysctl.get('name')} is not in the safe set")

    # --- restricted, Pod level ---
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUME_SOURCES:
            found.append(f"volume types: volume {volume['name']} uses {sorted(sources)}")
    if pod_sc.get("runAsNonRoot") is False:
        found.append("running as non-root: spec.securityContext.runAsNonRoot is false")
    if pod_sc.get("runAsUser") == 0:
        found.append("running as non-root user: spec.securityContext.runAsUser is 0")
    if pod_sc.get("seccompProfile") is not None and not _seccomp_ok(pod_sc["seccompProfile"]):
        found.append("seccomp: spec.securityContext.seccompProfile.type is not RuntimeDefault or Localhost")

    # --- per container ---
    for field, c in containers:
        where = f"spec.{field}[{c['name']}]"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"privileged: {where}.securityContext.privileged is true")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"HostProcess: {where}.securityContext.windowsOptions.hostProcess is true")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"host ports: {where} uses hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"/proc mount type: {where}.securityContext.procMount is {sc['procMount']}")
        if not _apparmor_ok(sc.get("appArmorProfile")):
            found.append(f"AppArmor: {where}.securityContext.appArmorProfile.type is Unconfined")
        cse = sc.get("seLinuxOptions") or {}
        if cse.get("type", "") not in SELINUX_TYPES or cse.get("user") or cse.get("role"):
            found.append(f"SELinux: {where}.securityContext.seLinuxOptions is not allowed")

        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"privilege escalation: {where}.securityContext.allowPrivilegeEscalation must be false")

        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and pod_sc.get("runAsNonRoot") is not True):
            found.append(f"running as non-root: runAsNonRoot must be true in spec.securityContext or {where}.securityContext")
        if sc.get("runAsUser") == 0:
            found.append(f"running as non-root user: {where}.securityContext.runAsUser is 0")

        profile = sc.get("seccompProfile")
        if profile is not None:
            if not _seccomp_ok(profile):
                found.append(f"seccomp: {where}.securityContext.seccompProfile.type is not RuntimeDefault or Localhost")
        elif not _seccomp_ok(pod_sc.get("seccompProfile")):
            found.append(f"seccomp: seccompProfile.type must be RuntimeDefault or Localhost in spec.securityContext or {where}.securityContext")

        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"capabilities: {where}.securityContext.capabilities.drop must include ALL")
        for cap in caps.get("add") or []:
            if cap not in RESTRICTED_CAPABILITIES:
                level = "restricted" if cap in BASELINE_CAPABILITIES else "baseline"
                found.append(f"capabilities ({level}): {where} adds {cap}")

    return found
