//! Standard `metav1.Condition`s: set one, keeping its transition time when its status
//! did not change, so `kubectl describe` shows since when a branch is ready.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The branch is connectable.
pub const READY: &str = "Ready";
/// Its timeline exists on a storage node.
pub const STORAGE_READY: &str = "StorageReady";
/// Its compute can serve (running, or suspended and wakeable).
pub const COMPUTE_READY: &str = "ComputeReady";
/// A following branch streams from its source (`spec.source.external`).
pub const FOLLOWING: &str = "Following";
/// A branch kept in the backup repository has its WAL reaching it.
pub const BACKUP_HEALTHY: &str = "BackupHealthy";

/// Sets condition `type_` in `conditions`.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Time(Timestamp::now());
        }
        c.status = status;
        c.reason = reason.to_string();
        c.message = message;
        c.observed_generation = generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    });
}

/// Whether condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// `bytes` for people, in binary units (`12Mi`), like Kubernetes quantities.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut v = bytes.max(0) as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{:.0}{}", v, UNITS[unit])
    } else {
        format!("{:.1}{}", v, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut cs = Vec::new();
        set(&mut cs, READY, false, "Creating", "a", Some(1));
        let t0 = cs[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(&mut cs, READY, false, "Creating", "b", Some(2));
        assert_eq!(cs[0].last_transition_time, t0);
        assert_eq!(cs[0].message, "b");
        set(&mut cs, READY, true, "Ready", "c", Some(2));
        assert_ne!(cs[0].last_transition_time, t0);
        assert!(is_true(&cs, READY));
        assert_eq!(cs.len(), 1);
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(1536), "1.5Ki");
        assert_eq!(human_bytes(12 * 1024 * 1024), "12Mi");
        assert_eq!(human_bytes(-5), "0");
    }
}
