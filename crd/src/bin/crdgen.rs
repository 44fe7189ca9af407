//! Writes Ramify's CRDs to `crds/` and `charts/ramify-crds/templates/`, or with `--check`
//! fails when the files there differ from what the Rust types generate.

use std::path::PathBuf;

use anyhow::{bail, Context};

fn main() -> anyhow::Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("usage: crdgen [--check]\n\nWrites the CRD YAML generated from crd/src into crds/ and charts/ramify-crds/templates/.\nWith --check, writes nothing and exits 1 if those files are stale.");
        return Ok(());
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(&manifest);
    let dirs = [root.join("crds"), root.join("charts/ramify-crds/templates")];
    let mut stale = Vec::new();
    for (name, yaml) in ramify_crd::crd_files()? {
        for dir in &dirs {
            let path = dir.join(&name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == yaml {
                continue;
            }
            if check {
                stale.push(path.display().to_string());
            } else {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
                std::fs::write(&path, &yaml)
                    .with_context(|| format!("write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "stale CRD files (run `cargo run -p ramify-crd --bin crdgen`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
