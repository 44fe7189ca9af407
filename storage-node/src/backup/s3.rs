//! The few object calls Ramify makes itself: its own records of each durable timeline
//! (parent, fork point, backups), small JSON files beside pgBackRest's repository.
//! Everything large (WAL, base backups) goes through pgBackRest; this is PUT, GET and
//! LIST of those records, signed with AWS Signature Version 4.

use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::{BackupError, Repo};

type HmacSha256 = Hmac<Sha256>;

/// A client for the repository's bucket.
pub struct Bucket {
    http: reqwest::Client,
    repo: Repo,
}

/// Characters left as they are in a SigV4 canonical URI and query (RFC 3986 unreserved).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

impl Bucket {
    pub fn new(repo: &Repo) -> Result<Bucket, BackupError> {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tls_built_in_root_certs(false);
        for cert in repo.ca_certificates()? {
            b = b.add_root_certificate(cert);
        }
        let http = b
            .build()
            .map_err(|e| BackupError::Bucket(format!("cannot build the HTTP client: {e}")))?;
        Ok(Bucket {
            http,
            repo: repo.clone(),
        })
    }

    /// Host header and URL path of `key` (path-style or virtual-host style).
    fn locate(&self, key: &str) -> (String, String) {
        let r = &self.repo;
        let port = if r.port == 443 {
            String::new()
        } else {
            format!(":{}", r.port)
        };
        if r.path_style {
            (
                format!("{}{port}", r.endpoint),
                format!("/{}/{}", r.bucket, encode(key, true)),
            )
        } else {
            (
                format!("{}.{}{port}", r.bucket, r.endpoint),
                format!("/{}", encode(key, true)),
            )
        }
    }

    /// A signed request (SigV4, payload hash included).
    fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let r = &self.repo;
        let (host, path) = self.locate(key);
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (encode(k, false), encode(v, false)))
            .collect();
        q.sort();
        let query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let now = Utc::now();
        let date = now.format("%Y%m%d").to_string();
        let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
        let payload = hex(&Sha256::digest(&body));
        let canonical = format!(
            "{method}\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{stamp}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload}"
        );
        let scope = format!("{date}/{}/s3/aws4_request", r.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut key_bytes = hmac(format!("AWS4{}", r.secret_key).as_bytes(), &date);
        for part in [r.region.as_str(), "s3", "aws4_request"] {
            key_bytes = hmac(&key_bytes, part);
        }
        let signature = hex(&hmac(&key_bytes, &to_sign));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
            r.access_key
        );
        let url = if query.is_empty() {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}{path}?{query}")
        };
        self.http
            .request(method, url)
            .header("x-amz-date", stamp)
            .header("x-amz-content-sha256", payload)
            .header("authorization", auth)
            .body(body)
    }

    async fn send(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackupError> {
        let resp = req.send().await.map_err(|e| {
            BackupError::Bucket(format!(
                "{what}: cannot reach {}: {e}",
                self.repo.describe()
            ))
        })?;
        Ok(resp)
    }

    async fn fail(&self, what: &str, resp: reqwest::Response) -> BackupError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        self.failure(what, status, &body)
    }

    fn failure(&self, what: &str, status: reqwest::StatusCode, body: &str) -> BackupError {
        let code = between(body, "<Code>", "</Code>").unwrap_or_default();
        let message = between(body, "<Message>", "</Message>").unwrap_or_default();
        if code == "NoSuchBucket" {
            return BackupError::Bucket(format!(
                "{what}: bucket {} does not exist at {} (deleted?); WAL stays on the node, and everything still on it is archived again once the bucket is there",
                self.repo.bucket, self.repo.endpoint
            ));
        }
        BackupError::Bucket(format!(
            "{what} in {}: HTTP {status} {code} {message}",
            self.repo.describe()
        ))
    }

    /// Writes `body` at `key` under the repository's prefix.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), BackupError> {
        let key = self.repo.key(key);
        let what = format!("writing {key}");
        let resp = self
            .send(&what, self.request(reqwest::Method::PUT, &key, &[], body))
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        Ok(())
    }

    /// Removes `key` under the repository's prefix; one already gone is fine.
    pub async fn delete(&self, key: &str) -> Result<(), BackupError> {
        let key = self.repo.key(key);
        let what = format!("deleting {key}");
        let resp = self
            .send(
                &what,
                self.request(reqwest::Method::DELETE, &key, &[], vec![]),
            )
            .await?;
        if !resp.status().is_success() && resp.status() != reqwest::StatusCode::NOT_FOUND {
            return Err(self.fail(&what, resp).await);
        }
        Ok(())
    }

    /// Reads `key` under the repository's prefix; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let key = self.repo.key(key);
        let what = format!("reading {key}");
        let resp = self
            .send(&what, self.request(reqwest::Method::GET, &key, &[], vec![]))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            // A missing key, not a missing bucket (which is an error).
            let body = resp.text().await.unwrap_or_default();
            if body.contains("<Code>NoSuchBucket</Code>") {
                return Err(self.failure(&what, reqwest::StatusCode::NOT_FOUND, &body));
            }
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| BackupError::Bucket(format!("{what}: {e}")))?;
        Ok(Some(bytes.to_vec()))
    }

    /// Keys under `prefix` (below the repository's prefix), relative to `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BackupError> {
        Ok(self
            .list_sizes(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Keys under `prefix` (relative to it) with their sizes in bytes.
    pub async fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>, BackupError> {
        let full = self.repo.key(prefix);
        let what = format!("listing {full}");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", full.as_str())];
            if let Some(t) = &token {
                query.push(("continuation-token", t.as_str()));
            }
            let resp = self
                .send(
                    &what,
                    self.request(reqwest::Method::GET, "", &query, vec![]),
                )
                .await?;
            if !resp.status().is_success() {
                return Err(self.fail(&what, resp).await);
            }
            let body = resp
                .text()
                .await
                .map_err(|e| BackupError::Bucket(format!("{what}: {e}")))?;
            let mut rest = body.as_str();
            while let Some(item) = between(rest, "<Contents>", "</Contents>") {
                let end = rest.find("</Contents>").unwrap_or(rest.len()) + "</Contents>".len();
                rest = &rest[end.min(rest.len())..];
                let Some(k) = between(&item, "<Key>", "</Key>") else {
                    continue;
                };
                let size = between(&item, "<Size>", "</Size>")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let k = unescape_xml(&k);
                if let Some(rel) = k.strip_prefix(&full) {
                    out.push((rel.trim_start_matches('/').to_string(), size));
                }
            }
            token = (between(&body, "<IsTruncated>", "</IsTruncated>").as_deref() == Some("true"))
                .then(|| between(&body, "<NextContinuationToken>", "</NextContinuationToken>"))
                .flatten()
                .map(|t| unescape_xml(&t));
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Whether the bucket exists and these credentials may list it.
    pub async fn check(&self) -> Result<(), BackupError> {
        self.list("ramify/").await.map(|_| ())
    }
}

fn between(s: &str, open: &str, close: &str) -> Option<String> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(s[start..end].to_string())
}

fn unescape_xml(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(encode("a b/c~d", true), "a%20b/c~d");
        assert_eq!(encode("a/b", false), "a%2Fb");
        assert_eq!(unescape_xml("a&amp;b&lt;"), "a&b<");
        assert_eq!(between("<K>x</K>", "<K>", "</K>").as_deref(), Some("x"));
    }

    /// The signing key derivation and signature of AWS's documented example
    /// (Signature Version 4, "Deriving the signing key").
    #[test]
    fn signing_key_matches_aws_example() {
        let mut k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215");
        for part in ["us-east-1", "iam", "aws4_request"] {
            k = hmac(&k, part);
        }
        assert_eq!(
            hex(&k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
