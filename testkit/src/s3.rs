//! A real S3-compatible server for tests: SeaweedFS's `weed mini` (built from its Go
//! module by `scripts/build-tools.sh`), serving one bucket over TLS on loopback, with a
//! CA and certificate of its own and fixed credentials. Every one of its listeners is
//! given a free port, so tests run side by side; it never talks to another address
//! (its telemetry is off).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running `weed mini` with one bucket.
pub struct S3Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    bucket: String,
    args: Vec<String>,
}

/// Access key of every test server.
pub const ACCESS_KEY: &str = "ramifytestkey";
/// Secret key of every test server.
pub const SECRET_KEY: &str = "ramify-test-secret-0123456789";

/// Where `scripts/build-tools.sh` puts `weed`.
pub fn weed_binary() -> PathBuf {
    let tools = std::env::var_os("RAMIFY_TOOLS")
        .map_or_else(|| PathBuf::from("/var/tmp/ramify-tools"), PathBuf::from);
    tools.join("bin/weed")
}

/// Whether tests that need an S3 server can run here; `Err` says why not. Under
/// `RAMIFY_REQUIRE_TOOLS=1` (what `make test` sets) a missing server is a failure.
pub fn available() -> Result<(), String> {
    let weed = weed_binary();
    let missing = [
        (weed.exists(), format!("{} (make tools)", weed.display())),
        (
            Path::new("/usr/bin/pgbackrest").exists(),
            "pgbackrest (apt-get install pgbackrest)".to_string(),
        ),
        (
            Command::new("openssl")
                .arg("version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "openssl".to_string(),
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect::<Vec<_>>();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing: {}", missing.join(", ")))
    }
}

/// True when a test needing an S3 server must be skipped (said on stderr); panics
/// instead when `RAMIFY_REQUIRE_TOOLS=1`.
pub fn skip_without_s3(test: &str) -> bool {
    match available() {
        Ok(()) => false,
        Err(why) if std::env::var("RAMIFY_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("{test}: needs an S3 server, {why}")
        }
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            true
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

impl S3Server {
    /// Starts a server with bucket `bucket` and waits until it answers (about 8 s).
    pub fn start(bucket: &str) -> std::io::Result<S3Server> {
        let dir = tempfile::Builder::new().prefix("ramify-s3-").tempdir()?;
        let d = dir.path();
        // A CA of its own and a certificate naming `localhost` (pgBackRest refuses an
        // IP-address name), signed by it.
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=ramify-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        )?;
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "req.csr",
            ],
        )?;
        fs::write(
            d.join("ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "req.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext",
                "-out",
                "cert.pem",
            ],
        )?;
        // Readable by the Postgres OS user the storage node runs as.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.join("ca.pem"), fs::Permissions::from_mode(0o644))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        fs::create_dir(d.join("data"))?;
        let port = free_port();
        let mut args = vec![
            "mini".to_string(),
            format!("-dir={}", d.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.port={port}"),
            format!("-s3.cert.file={}", d.join("cert.pem").display()),
            format!("-s3.key.file={}", d.join("key.pem").display()),
            "-admin.ui=false".into(),
            "-admin.port.legacy=0".into(),
            "-webdav=false".into(),
            "-master.telemetry=false".into(),
        ];
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "s3.port.iceberg",
            "s3.port.lance",
            "s3.debug.port",
            "admin.port",
            "admin.port.grpc",
            "debug.port",
            "metricsPort",
        ] {
            args.push(format!("-{flag}={}", free_port()));
        }
        let mut s = S3Server {
            dir,
            child: None,
            port,
            bucket: bucket.to_string(),
            args,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))?;
        let child = Command::new(weed_binary())
            .args(&self.args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("S3_BUCKET", &self.bucket)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    /// Waits until the S3 port answers HTTPS and the bucket exists.
    fn wait_ready(&mut self, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    return Err(std::io::Error::other(format!(
                        "weed mini exited ({status}):\n{}",
                        self.log_tail()
                    )));
                }
            }
            // Signed (curl's own SigV4): 200 once the bucket exists; weed mini makes it
            // from S3_BUCKET at start-up, but not always before it answers, so a missing
            // bucket is created here.
            let code = self.curl_signed("GET", &format!("{}?list-type=2", self.bucket))?;
            if code == "200" {
                return Ok(());
            }
            if code == "404" {
                self.curl_signed("PUT", &self.bucket.clone())?;
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "weed mini did not serve bucket {} within {timeout:?}:\n{}",
                    self.bucket,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A request signed with the test credentials; returns the HTTP status ("000" when
    /// nothing answered).
    fn curl_signed(&self, method: &str, path: &str) -> std::io::Result<String> {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "-X",
                method,
            ])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
            .arg("--cacert")
            .arg(self.ca_file())
            .arg(format!("https://localhost:{}/{path}", self.port))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A signed GET of `path_and_query` below the bucket.
    fn curl_get(&self, path_and_query: &str) -> std::io::Result<std::process::Output> {
        Command::new("curl")
            .args(["-s", "-f", "--max-time", "10"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
            .arg("--cacert")
            .arg(self.ca_file())
            .arg(format!(
                "https://localhost:{}/{}{path_and_query}",
                self.port, self.bucket
            ))
            .output()
    }

    /// The object at `key` in the bucket (signed GET), `None` when absent.
    pub fn get_object(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        let out = self.curl_get(&format!("/{key}"))?;
        Ok(out.status.success().then_some(out.stdout))
    }

    /// Deletes every object in the bucket and the bucket itself (the "bucket deleted"
    /// fault); returns the HTTP status of the bucket's DELETE.
    pub fn delete_bucket(&self) -> std::io::Result<String> {
        self.empty_bucket()?;
        self.curl_signed("DELETE", &self.bucket.clone())
    }

    /// Keys in the bucket starting with `prefix` (the first thousand).
    pub fn list_keys(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        let prefix: String = prefix
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let out = self.curl_get(&format!("?list-type=2&prefix={prefix}"))?;
        if !out.status.success()
            || !out.stdout.starts_with(b"<?xml") && !out.stdout.starts_with(b"<List")
        {
            return Err(std::io::Error::other(format!(
                "cannot list the bucket: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect())
    }

    /// Deletes every object in the bucket (the "bucket emptied" fault).
    pub fn empty_bucket(&self) -> std::io::Result<()> {
        loop {
            let keys = self.list_keys("")?;
            if keys.is_empty() {
                return Ok(());
            }
            for k in keys {
                let code = self.curl_signed("DELETE", &format!("{}/{k}", self.bucket))?;
                if !code.starts_with('2') {
                    return Err(std::io::Error::other(format!("DELETE {k}: HTTP {code}")));
                }
            }
        }
    }

    /// Makes the bucket again (empty), after [`S3Server::delete_bucket`]; returns the
    /// HTTP status.
    pub fn create_bucket(&self) -> std::io::Result<String> {
        self.curl_signed("PUT", &self.bucket.clone())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `localhost:PORT`.
    pub fn endpoint(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The CA bundle that signs the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The storage node's flags for a repository at `prefix` in this server's bucket.
    pub fn node_args(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("--backup-repo=s3://{}/{prefix}", self.bucket),
            format!("--backup-endpoint={}", self.endpoint()),
            "--backup-uri-style=path".into(),
            format!("--backup-ca-file={}", self.ca_file().display()),
        ]
    }

    /// The credentials, as the environment the storage node reads them from.
    pub fn node_env(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
    }

    /// Stops the server (the bucket's data stays): the repository is unreachable.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
