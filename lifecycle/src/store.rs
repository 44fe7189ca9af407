//! Where branches are kept: a JSON file in local mode (the operator keeps them in CRDs).

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ramify_api::TimelineId;

use crate::model::Branch;

/// Errors of the branch store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Persistent set of branches, keyed by name, and the timelines operations in flight
/// are making or retiring (see [`BranchStore::pending`]).
pub trait BranchStore: Send + Sync {
    /// Every branch, oldest first.
    fn all(&self) -> Result<Vec<Branch>, StoreError>;
    /// Reads every branch, lets `change` modify them and writes the result, in one
    /// atomic step that no other write of this store interleaves with.
    fn modify(&self, change: &mut dyn FnMut(&mut Vec<Branch>)) -> Result<(), StoreError>;
    /// Inserts or replaces a branch.
    fn put(&self, branch: &Branch) -> Result<(), StoreError> {
        self.put_all(std::slice::from_ref(branch))
    }
    /// Inserts or replaces several branches in one atomic write: after a crash either
    /// all of them are stored or none.
    fn put_all(&self, branches: &[Branch]) -> Result<(), StoreError> {
        self.modify(&mut |all| {
            for branch in branches {
                match all.iter_mut().find(|b| b.name == branch.name) {
                    Some(b) => *b = branch.clone(),
                    None => all.push(branch.clone()),
                }
            }
        })
    }
    /// Removes a branch (no-op when absent).
    fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.modify(&mut |all| all.retain(|b| b.name != name))
    }
    /// One branch.
    fn get(&self, name: &str) -> Result<Option<Branch>, StoreError> {
        Ok(self.all()?.into_iter().find(|b| b.name == name))
    }
    /// Timelines an operation is making (before the branch that will point at it is
    /// written) or retiring (before the branch stops pointing at it). After a crash, the
    /// ones no branch points at are what the operation left: [`crate::Lifecycle::recover`]
    /// deletes those and only those.
    fn pending(&self) -> Result<Vec<TimelineId>, StoreError>;
    /// Records (`true`) or clears (`false`) a pending timeline, durably.
    fn set_pending(&self, id: TimelineId, pending: bool) -> Result<(), StoreError>;
}

/// Branches in one JSON file, mode 0600 (it holds passwords), replaced atomically
/// (write a temporary file, fsync, rename) so a crash never leaves it half-written; the
/// pending timelines in a second file beside it (`<name>.pending.json`), written the same
/// way.
pub struct JsonFileStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl JsonFileStore {
    /// A store at `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> JsonFileStore {
        JsonFileStore {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    fn pending_path(&self) -> PathBuf {
        self.path.with_extension("pending.json")
    }

    fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, StoreError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
            Err(source) => Err(StoreError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn write<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<(), StoreError> {
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { op, path, source }
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(items).map_err(|source| StoreError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("replace", path))?;
        if let Some(dir) = path.parent() {
            // The new file is in place; only its durability across a power loss is in
            // question, so a failing directory sync is reported, not an error that would
            // make the caller undo what is already stored.
            if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the directory of the branch store");
            }
        }
        Ok(())
    }
}

impl BranchStore for JsonFileStore {
    fn all(&self) -> Result<Vec<Branch>, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        Self::read(&self.path)
    }

    fn modify(&self, change: &mut dyn FnMut(&mut Vec<Branch>)) -> Result<(), StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = Self::read(&self.path)?;
        change(&mut all);
        Self::write(&self.path, &all)
    }

    fn pending(&self) -> Result<Vec<TimelineId>, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        Self::read(&self.pending_path())
    }

    fn set_pending(&self, id: TimelineId, pending: bool) -> Result<(), StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.pending_path();
        let mut ids: Vec<TimelineId> = Self::read(&path)?;
        let had = ids.contains(&id);
        if had == pending {
            return Ok(());
        }
        if pending {
            ids.push(id);
        } else {
            ids.retain(|i| *i != id);
        }
        Self::write(&path, &ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn branch(name: &str) -> Branch {
        Branch {
            name: name.into(),
            parent: None,
            timeline: uuid::Uuid::new_v4(),
            at: None,
            port: 5000,
            user: "app".into(),
            password: "pw".into(),
            database: "app".into(),
            suspend_after_secs: 300,
            created_at: chrono::Utc::now(),
            protected: false,
            expires_at: None,
            checkpoints: vec![],
            former_timelines: vec![],
            backup_of: None,
            password_pending: false,
            follows: None,
        }
    }

    #[test]
    fn a_state_file_from_before_the_workflows_still_loads() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("branches.json");
        let old = r#"[{"name":"main","parent":null,"timeline":"00000000-0000-0000-0000-000000000001","at":null,"port":5000,"user":"app","password":"pw","database":"app","suspend_after_secs":300,"created_at":"2026-03-01T12:00:00Z"}]"#;
        std::fs::write(&path, old).unwrap();
        let b = JsonFileStore::new(&path).get("main").unwrap().unwrap();
        assert!(!b.protected && b.expires_at.is_none() && b.checkpoints.is_empty());
    }

    #[test]
    fn put_get_remove_and_private_file() {
        let t = tempfile::tempdir().unwrap();
        let s = JsonFileStore::new(t.path().join("branches.json"));
        assert!(s.all().unwrap().is_empty());
        s.put(&branch("main")).unwrap();
        s.put(&branch("dev")).unwrap();
        let mut dev = branch("dev");
        dev.port = 6000;
        s.put(&dev).unwrap();
        assert_eq!(s.get("dev").unwrap().unwrap().port, 6000);
        assert_eq!(s.all().unwrap().len(), 2);
        s.remove("main").unwrap();
        assert!(s.get("main").unwrap().is_none());
        let mode = std::fs::metadata(t.path().join("branches.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn put_all_replaces_and_inserts_in_one_write() {
        let t = tempfile::tempdir().unwrap();
        let s = JsonFileStore::new(t.path().join("branches.json"));
        s.put(&branch("main")).unwrap();
        let mut main = branch("main");
        main.port = 7000;
        let backup = branch("main-before-restore");
        s.put_all(&[main, backup]).unwrap();
        let all = s.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].port, 7000);
        assert_eq!(all[1].name, "main-before-restore");
        assert!(!t.path().join("branches.json.tmp").exists());
    }

    #[test]
    fn pending_timelines_are_kept_beside_the_branches() {
        let t = tempfile::tempdir().unwrap();
        let s = JsonFileStore::new(t.path().join("branches.json"));
        assert!(s.pending().unwrap().is_empty());
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        s.set_pending(a, true).unwrap();
        s.set_pending(b, true).unwrap();
        s.set_pending(a, true).unwrap();
        assert_eq!(s.pending().unwrap(), [a, b]);
        s.set_pending(a, false).unwrap();
        assert_eq!(
            JsonFileStore::new(t.path().join("branches.json"))
                .pending()
                .unwrap(),
            [b]
        );
        let mode = std::fs::metadata(t.path().join("branches.pending.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(s.all().unwrap().is_empty(), "the branches are another file");
    }
}
