//! `local up --xfs-image`: a sparse XFS image with reflinks, loop-mounted on the data
//! directory, and recorded in `<data>/local/mount.json` so that `local down` unmounts it.

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Why preparing or removing the image mount failed.
#[derive(Debug, thiserror::Error)]
pub enum XfsImageError {
    #[error("--xfs-image needs root (it runs mkfs.xfs and mount); run as root, or put --data-dir on an XFS (reflink=1) or btrfs filesystem yourself")]
    NotRoot,
    #[error("{} is not empty and not a mount point: mounting the image over it would hide its files; move them away or use another --data-dir", dir.display())]
    NotEmpty { dir: PathBuf },
    #[error("`{program}` is not installed: {hint}")]
    Missing {
        program: &'static str,
        hint: &'static str,
    },
    #[error("`{command}` failed: {output}")]
    Failed { command: String, output: String },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> XfsImageError {
    let path = path.to_path_buf();
    move |source| XfsImageError::Io {
        action,
        path,
        source,
    }
}

/// What `local up` did to the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The data directory already was a mount point; nothing was done.
    AlreadyMounted,
    /// The image was mounted (`created`: it was made by this call).
    Mounted { image: PathBuf, created: bool },
}

/// `<data>/local/mount.json`: the image `local up` mounted on the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub image: PathBuf,
}

impl MountRecord {
    pub fn path(data_dir: &Path) -> PathBuf {
        ramify_local::files::local_dir(data_dir).join("mount.json")
    }

    pub fn read(data_dir: &Path) -> Result<Option<MountRecord>, XfsImageError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                io_err("cannot parse", &path)(io::Error::new(ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot read", &path)(e)),
        }
    }

    fn write(&self, data_dir: &Path) -> Result<(), XfsImageError> {
        let path = Self::path(data_dir);
        let json = serde_json::to_vec_pretty(self).map_err(|e| {
            io_err("cannot encode", &path)(io::Error::new(ErrorKind::InvalidData, e))
        })?;
        std::fs::write(&path, json).map_err(io_err("cannot write", &path))
    }
}

/// `<data-dir>.xfs.img`, beside the data directory (never inside it: it is mounted there).
pub fn image_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "ramify".into());
    name.push(".xfs.img");
    data_dir.with_file_name(name)
}

/// Mount points listed in `/proc/self/mountinfo` text (field 5, octal escapes decoded).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `dir` (absolute, canonical) is a mount point of this process's namespace.
pub fn is_mount_point(dir: &Path) -> Result<bool, XfsImageError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(io_err("cannot read", info))?;
    Ok(mount_points(&text).iter().any(|p| p == dir))
}

/// Loop devices `losetup -j IMAGE` lists for the image.
pub fn loop_devices(losetup_output: &str) -> Vec<String> {
    losetup_output
        .lines()
        .filter_map(|l| l.split_once(':').map(|(dev, _)| dev.trim().to_string()))
        .filter(|d| d.starts_with("/dev/"))
        .collect()
}

fn run(program: &'static str, args: &[&std::ffi::OsStr]) -> Result<String, XfsImageError> {
    let command = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            XfsImageError::Missing {
                program,
                hint: match program {
                    "mkfs.xfs" => "install xfsprogs (apt-get install xfsprogs)",
                    _ => "install util-linux and mount (apt-get install util-linux mount)",
                },
            }
        } else {
            XfsImageError::Failed {
                command: command.clone(),
                output: e.to_string(),
            }
        }
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    Err(XfsImageError::Failed {
        command,
        output: if one_line.is_empty() {
            out.status.to_string()
        } else {
            one_line
        },
    })
}

/// Makes `data_dir` (absolute) an XFS filesystem with reflinks of `size` bytes, unless it
/// already is a mount point. Creates and formats the image only when it does not exist.
pub fn prepare(data_dir: &Path, size: u64) -> Result<Prepared, XfsImageError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(XfsImageError::NotRoot);
    }
    std::fs::create_dir_all(data_dir).map_err(io_err("cannot create", data_dir))?;
    let dir = std::fs::canonicalize(data_dir).map_err(io_err("cannot resolve", data_dir))?;
    if is_mount_point(&dir)? {
        return Ok(Prepared::AlreadyMounted);
    }
    let mut entries = std::fs::read_dir(&dir).map_err(io_err("cannot read", &dir))?;
    if entries.next().is_some() {
        return Err(XfsImageError::NotEmpty { dir });
    }
    let image = image_path(&dir);
    let created = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&image)
    {
        Ok(file) => {
            let made = file
                .set_len(size)
                .map_err(io_err("cannot size", &image))
                .and_then(|()| {
                    run(
                        "mkfs.xfs",
                        &[
                            "-q".as_ref(),
                            "-m".as_ref(),
                            "reflink=1".as_ref(),
                            image.as_os_str(),
                        ],
                    )
                });
            if let Err(e) = made {
                let _ = std::fs::remove_file(&image);
                return Err(e);
            }
            true
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err("cannot create", &image)(e)),
    };
    run(
        "mount",
        &[
            "-o".as_ref(),
            "loop".as_ref(),
            image.as_os_str(),
            dir.as_os_str(),
        ],
    )?;
    let local = ramify_local::files::local_dir(&dir);
    std::fs::create_dir_all(&local).map_err(io_err("cannot create", &local))?;
    MountRecord {
        image: image.clone(),
    }
    .write(&dir)?;
    Ok(Prepared::Mounted { image, created })
}

/// Unmounts the image `prepare` recorded, if any, and detaches its loop devices.
/// Returns the image unmounted.
pub fn unmount(data_dir: &Path) -> Result<Option<PathBuf>, XfsImageError> {
    let Some(record) = MountRecord::read(data_dir)? else {
        return Ok(None);
    };
    let dir = std::fs::canonicalize(data_dir).map_err(io_err("cannot resolve", data_dir))?;
    if is_mount_point(&dir)? {
        // Postgres and the daemon just exited; the kernel may need a moment to let go.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match run("umount", &[dir.as_os_str()]) {
                Ok(_) => break,
                Err(XfsImageError::Failed { output, .. })
                    if output.contains("busy") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let attached = run("losetup", &["-j".as_ref(), record.image.as_os_str()])?;
    for dev in loop_devices(&attached) {
        run("losetup", &["-d".as_ref(), dev.as_ref()])?;
    }
    Ok(Some(record.image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sits_beside_the_data_dir() {
        assert_eq!(
            image_path(Path::new("/var/lib/ramify")),
            PathBuf::from("/var/lib/ramify.xfs.img")
        );
        assert_eq!(
            image_path(Path::new("/home/me/.local/share/ramify")),
            PathBuf::from("/home/me/.local/share/ramify.xfs.img")
        );
    }

    #[test]
    fn mountinfo_points_are_unescaped() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
98 27 7:0 / /var/lib/ramify rw,relatime - xfs /dev/loop0 rw,attr2
99 27 7:1 / /tmp/with\\040space rw - xfs /dev/loop1 rw
";
        assert_eq!(
            mount_points(text),
            [
                PathBuf::from("/proc"),
                PathBuf::from("/var/lib/ramify"),
                PathBuf::from("/tmp/with space")
            ]
        );
        assert_eq!(unescape_octal("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn losetup_lines_name_devices() {
        let out = "/dev/loop0: [2049]:1234 (/var/lib/ramify.xfs.img)\n/dev/loop3: []: (/var/lib/ramify.xfs.img)\n";
        assert_eq!(loop_devices(out), ["/dev/loop0", "/dev/loop3"]);
        assert!(loop_devices("").is_empty());
    }

    #[test]
    fn mount_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MountRecord::read(dir.path()).unwrap(), None);
        std::fs::create_dir_all(ramify_local::files::local_dir(dir.path())).unwrap();
        let rec = MountRecord {
            image: PathBuf::from("/var/lib/ramify.xfs.img"),
        };
        rec.write(dir.path()).unwrap();
        assert_eq!(MountRecord::read(dir.path()).unwrap(), Some(rec));
    }

    #[test]
    fn root_is_required() {
        if nix::unistd::Uid::effective().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            prepare(dir.path(), 1 << 30),
            Err(XfsImageError::NotRoot)
        ));
    }

    #[test]
    fn a_busy_directory_is_not_mounted_over() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), b"x").unwrap();
        let err = prepare(dir.path(), 1 << 30).unwrap_err();
        assert!(matches!(err, XfsImageError::NotEmpty { .. }), "{err}");
        assert!(!image_path(dir.path()).exists());
    }
}
