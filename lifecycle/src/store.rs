//! Where branches are kept: a JSON file in local mode (the operator keeps them in CRDs).

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// Persistent set of branches, keyed by name.
pub trait BranchStore: Send + Sync {
    /// Every branch, oldest first.
    fn all(&self) -> Result<Vec<Branch>, StoreError>;
    /// Inserts or replaces a branch.
    fn put(&self, branch: &Branch) -> Result<(), StoreError>;
    /// Inserts or replaces several branches in one atomic write: after a crash either
    /// all of them are stored or none.
    fn put_all(&self, branches: &[Branch]) -> Result<(), StoreError>;
    /// Removes a branch (no-op when absent).
    fn remove(&self, name: &str) -> Result<(), StoreError>;
    /// One branch.
    fn get(&self, name: &str) -> Result<Option<Branch>, StoreError> {
        Ok(self.all()?.into_iter().find(|b| b.name == name))
    }
}

/// Branches in one JSON file, mode 0600 (it holds passwords), replaced atomically
/// (write a temporary file, fsync, rename) so a crash never leaves it half-written.
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

    fn read(&self) -> Result<Vec<Branch>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
            Err(source) => Err(StoreError::Io {
                op: "read",
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn write(&self, branches: &[Branch]) -> Result<(), StoreError> {
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { op, path, source }
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(branches).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
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
        std::fs::rename(&tmp, &self.path).map_err(io_err("replace", &self.path))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync", dir))?;
        }
        Ok(())
    }
}

impl BranchStore for JsonFileStore {
    fn all(&self) -> Result<Vec<Branch>, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.read()
    }

    fn put(&self, branch: &Branch) -> Result<(), StoreError> {
        self.put_all(std::slice::from_ref(branch))
    }

    fn put_all(&self, branches: &[Branch]) -> Result<(), StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.read()?;
        for branch in branches {
            match all.iter_mut().find(|b| b.name == branch.name) {
                Some(b) => *b = branch.clone(),
                None => all.push(branch.clone()),
            }
        }
        self.write(&all)
    }

    fn remove(&self, name: &str) -> Result<(), StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.read()?;
        all.retain(|b| b.name != name);
        self.write(&all)
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
}
