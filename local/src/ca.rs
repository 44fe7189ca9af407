//! Local mode's TLS certificate authority: generated once under `<data>/tls/`, reused
//! across restarts, so that a client that trusts `ca.crt` keeps trusting every branch.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use ramify_proxy::CertificateAuthority;

use crate::files;

/// The CA of the data directory: read from `<data>/tls/ca.{crt,key}`, or generated and
/// written there (`ca.crt` 0644 for clients' `sslrootcert`, `ca.key` 0600) when neither
/// exists. Half a CA (one file without the other) is an error, never overwritten: a
/// client may trust that certificate.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<CertificateAuthority> {
    let (cert, key) = (files::ca_cert_path(data_dir), files::ca_key_path(data_dir));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            CertificateAuthority::from_pem(&read(&cert)?, &read(&key)?).with_context(|| {
                format!(
                    "{} / {}: remove both to have local mode generate a new CA (clients must then trust the new ca.crt)",
                    cert.display(),
                    key.display()
                )
            })
        }
        (false, false) => {
            let dir = files::tls_dir(data_dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
            let ca = CertificateAuthority::generate("Ramify local CA")?;
            // The key first: a certificate on disk always has its key beside it.
            write_atomically(&key, ca.key_pem().as_bytes(), 0o600)?;
            write_atomically(&cert, ca.cert_pem().as_bytes(), 0o644)?;
            Ok(ca)
        }
        (cert_exists, _) => bail!(
            "{} exists but {} does not: restore the missing file, or remove {} to have local mode generate a new CA",
            if cert_exists { cert.display() } else { key.display() },
            if cert_exists { key.display() } else { cert.display() },
            files::tls_dir(data_dir).display()
        ),
    }
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; ca.crt must be readable by clients.
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        out.write_all(bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_ca_is_created_once_with_private_key_and_reused() {
        let data = tempfile::tempdir().unwrap();
        let first = load_or_create(data.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&files::ca_cert_path(data.path())), 0o644);
        assert_eq!(mode(&files::ca_key_path(data.path())), 0o600);
        let again = load_or_create(data.path()).unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        assert_eq!(
            std::fs::read_to_string(files::ca_cert_path(data.path())).unwrap(),
            first.cert_pem()
        );
    }

    #[test]
    fn half_a_ca_is_refused_not_replaced() {
        let data = tempfile::tempdir().unwrap();
        load_or_create(data.path()).unwrap();
        let key = files::ca_key_path(data.path());
        std::fs::remove_file(&key).unwrap();
        let err = load_or_create(data.path()).unwrap_err();
        assert!(err.to_string().contains("ca.key does not"), "{err}");
        assert!(!key.exists());
    }
}
