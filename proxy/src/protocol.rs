//! The few pieces of the Postgres wire protocol the proxy must understand, without I/O.
//!
//! The proxy reads the client's first packet (to answer `SSLRequest`/`GSSENCRequest`,
//! route `CancelRequest`s and wake the compute on a `StartupMessage`), writes
//! `ErrorResponse`s of its own, and scans the server's startup-phase messages for
//! `BackendKeyData` and the first `ReadyForQuery`. Everything after that is spliced
//! unparsed.

use crate::ProxyError;

/// Largest startup packet Postgres itself accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// `SSLRequest` code.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// SQLSTATE `cannot_connect_now`: the compute could not be woken.
pub const SQLSTATE_CANNOT_CONNECT_NOW: &str = "57P03";
/// SQLSTATE `connection_failure`: woken, but its Postgres refused the connection.
pub const SQLSTATE_CONNECTION_FAILURE: &str = "08006";
/// SQLSTATE `too_many_connections`: a connection cap of the proxy was reached.
pub const SQLSTATE_TOO_MANY_CONNECTIONS: &str = "53300";
/// SQLSTATE `protocol_violation`.
pub const SQLSTATE_PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE `invalid_authorization_specification`: what Postgres answers when no
/// `pg_hba.conf` line allows the connection, e.g. plaintext where TLS is required.
pub const SQLSTATE_INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE `feature_not_supported` (protocol 2 clients).
pub const SQLSTATE_FEATURE_NOT_SUPPORTED: &str = "0A000";

/// The key a `CancelRequest` names, learnt from the server's `BackendKeyData`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// Backend process id.
    pub pid: i32,
    /// Secret key.
    pub secret: i32,
}

/// A client's first packet (after the length word), classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendStartup {
    /// `SSLRequest`: answer `S` and run the TLS handshake when the route has a
    /// certificate, else `N`; then read the next packet.
    SslRequest,
    /// `GSSENCRequest`: answer `N` and read the next packet.
    GssEncRequest,
    /// `CancelRequest` for a running query.
    Cancel(CancelKey),
    /// A protocol 3 `StartupMessage`; `packet` is the complete packet, length included.
    Startup {
        /// The packet to forward to the compute unchanged.
        packet: Vec<u8>,
        /// `user`, `database`, ... as sent.
        params: Vec<(String, String)>,
    },
}

/// Checks the length word of a startup-phase packet and returns the body length.
pub fn startup_body_len(len_word: [u8; 4]) -> Result<usize, ProxyError> {
    let len = u32::from_be_bytes(len_word) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(ProxyError::Protocol {
            reason: format!("invalid startup packet length {len}"),
        });
    }
    Ok(len - 4)
}

/// Classifies a startup-phase packet from its body (everything after the length word).
pub fn parse_frontend_startup(body: &[u8]) -> Result<FrontendStartup, ProxyError> {
    let code = read_u32(body, 0).ok_or_else(|| protocol("startup packet without a code"))?;
    match code {
        SSL_REQUEST_CODE => Ok(FrontendStartup::SslRequest),
        GSSENC_REQUEST_CODE => Ok(FrontendStartup::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if body.len() != 12 {
                return Err(protocol("CancelRequest must be 16 bytes long"));
            }
            let pid = read_u32(body, 4).unwrap_or_default() as i32;
            let secret = read_u32(body, 8).unwrap_or_default() as i32;
            Ok(FrontendStartup::Cancel(CancelKey { pid, secret }))
        }
        version if version >> 16 == 3 => {
            let params = parse_startup_params(&body[4..])?;
            let mut packet = Vec::with_capacity(body.len() + 4);
            packet.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            packet.extend_from_slice(body);
            Ok(FrontendStartup::Startup { packet, params })
        }
        version => Err(ProxyError::UnsupportedProtocol {
            major: version >> 16,
            minor: version & 0xffff,
        }),
    }
}

/// `name\0value\0 ... \0`, as in a `StartupMessage`.
fn parse_startup_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, ProxyError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut rest)
            .ok_or_else(|| protocol("StartupMessage parameters are not terminated"))?;
        if name.is_empty() {
            return Ok(params);
        }
        let value = take_cstr(&mut rest)
            .ok_or_else(|| protocol("StartupMessage parameter without a value"))?;
        params.push((name, value));
    }
}

fn take_cstr(rest: &mut &[u8]) -> Option<String> {
    let nul = rest.iter().position(|&b| b == 0)?;
    let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
    *rest = &rest[nul + 1..];
    Some(s)
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn protocol(reason: &str) -> ProxyError {
    ProxyError::Protocol {
        reason: reason.to_owned(),
    }
}

/// A `FATAL` `ErrorResponse` with SQLSTATE `code` and `message`, ready to send.
pub fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 32);
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        // A NUL inside would end the field early; Postgres strings cannot hold one.
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    let mut msg = Vec::with_capacity(body.len() + 5);
    msg.push(b'E');
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// The 16-byte `CancelRequest` for `key`, as a client sends it.
pub fn cancel_request(key: CancelKey) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[..4].copy_from_slice(&16u32.to_be_bytes());
    packet[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    packet[8..12].copy_from_slice(&key.pid.to_be_bytes());
    packet[12..].copy_from_slice(&key.secret.to_be_bytes());
    packet
}

/// The SQLSTATE (`C` field) of an `ErrorResponse` body, if it has one.
pub fn error_sqlstate(body: &[u8]) -> Option<&str> {
    let mut fields = body;
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            return None;
        }
        let end = rest.iter().position(|&b| b == 0)?;
        if kind == b'C' {
            return std::str::from_utf8(&rest[..end]).ok();
        }
        fields = &rest[end + 1..];
    }
    None
}

/// What [`BackendStartupScanner::feed`] found in one chunk of server bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// A `BackendKeyData` completed in this chunk.
    pub key: Option<CancelKey>,
    /// The first `ReadyForQuery` ended at this offset of the chunk: the startup phase
    /// is over and everything from here on may be spliced.
    pub ready_at: Option<usize>,
    /// An `AuthenticationOk` (`R` with code 0) completed in this chunk: Postgres
    /// accepted the client's credentials.
    pub authenticated: bool,
}

/// Follows the server's message stream during the startup phase without buffering whole
/// messages: only headers and the `BackendKeyData` body are kept, every byte is still
/// forwarded by the caller unchanged.
#[derive(Debug, Default)]
pub struct BackendStartupScanner {
    /// Bytes of the current message's 5-byte header seen so far.
    header: Vec<u8>,
    /// Message type and body bytes still to skip (or collect, for 'K' and 'R').
    current: Option<(u8, usize)>,
    /// The body length of the current message.
    body_len: usize,
    /// The `BackendKeyData` body, or the first bytes of an `Authentication*` body.
    key_body: Vec<u8>,
    done: bool,
}

impl BackendStartupScanner {
    /// Scans `chunk`, the next bytes the server sent. After the first `ReadyForQuery`
    /// the scanner is done and ignores further input.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<ScanResult, ProxyError> {
        let mut result = ScanResult::default();
        let mut at = 0;
        while at < chunk.len() && !self.done {
            match self.current {
                None => {
                    let want = 5 - self.header.len();
                    let take = want.min(chunk.len() - at);
                    self.header.extend_from_slice(&chunk[at..at + take]);
                    at += take;
                    if self.header.len() == 5 {
                        let kind = self.header[0];
                        let len = read_u32(&self.header, 1).unwrap_or_default() as usize;
                        self.header.clear();
                        if len < 4 {
                            return Err(ProxyError::Protocol {
                                reason: format!(
                                    "server message '{}' with length {len}",
                                    kind as char
                                ),
                            });
                        }
                        self.current = Some((kind, len - 4));
                        self.body_len = len - 4;
                        self.key_body.clear();
                    }
                }
                Some((kind, remaining)) => {
                    let take = remaining.min(chunk.len() - at);
                    if kind == b'K' {
                        self.key_body.extend_from_slice(&chunk[at..at + take]);
                    } else if kind == b'R' {
                        // Only the code word matters; SASL payloads can be long.
                        let want = 4usize.saturating_sub(self.key_body.len()).min(take);
                        self.key_body.extend_from_slice(&chunk[at..at + want]);
                    }
                    at += take;
                    self.current = Some((kind, remaining - take));
                }
            }
            if let Some((kind, 0)) = self.current {
                self.current = None;
                match kind {
                    b'K' => {
                        // Protocol 3.0 keys are 4 bytes; 3.2 allows longer ones, which
                        // a 16-byte CancelRequest cannot carry anyway.
                        if let (Some(pid), Some(secret)) =
                            (read_u32(&self.key_body, 0), read_u32(&self.key_body, 4))
                        {
                            if self.key_body.len() == 8 {
                                result.key = Some(CancelKey {
                                    pid: pid as i32,
                                    secret: secret as i32,
                                });
                            }
                        }
                    }
                    b'R' if self.body_len == 4 && read_u32(&self.key_body, 0) == Some(0) => {
                        result.authenticated = true;
                    }
                    b'Z' => {
                        self.done = true;
                        result.ready_at = Some(at);
                    }
                    _ => {}
                }
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_body(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn classifies_ssl_gss_and_cancel() {
        assert_eq!(
            parse_frontend_startup(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            FrontendStartup::SslRequest
        );
        assert_eq!(
            parse_frontend_startup(&GSSENC_REQUEST_CODE.to_be_bytes()).unwrap(),
            FrontendStartup::GssEncRequest
        );
        let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel.extend_from_slice(&1234i32.to_be_bytes());
        cancel.extend_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(
            parse_frontend_startup(&cancel).unwrap(),
            FrontendStartup::Cancel(CancelKey {
                pid: 1234,
                secret: -5
            })
        );
        let key = CancelKey {
            pid: 1234,
            secret: -5,
        };
        assert_eq!(&cancel_request(key)[..4], &16u32.to_be_bytes());
        assert_eq!(&cancel_request(key)[4..], &cancel[..]);
        cancel.push(0);
        assert!(matches!(
            parse_frontend_startup(&cancel),
            Err(ProxyError::Protocol { .. })
        ));
    }

    #[test]
    fn startup_message_keeps_the_packet_and_reads_params() {
        let body = startup_body(&[("user", "app"), ("database", "postgres")]);
        let FrontendStartup::Startup { packet, params } = parse_frontend_startup(&body).unwrap()
        else {
            panic!("not a startup message");
        };
        assert_eq!(&packet[..4], &((body.len() + 4) as u32).to_be_bytes());
        assert_eq!(&packet[4..], &body[..]);
        assert_eq!(
            params,
            vec![
                ("user".to_owned(), "app".to_owned()),
                ("database".to_owned(), "postgres".to_owned())
            ]
        );
    }

    #[test]
    fn rejects_bad_startup_packets() {
        let mut unterminated = 196_608u32.to_be_bytes().to_vec();
        unterminated.extend_from_slice(b"user\0app");
        assert!(matches!(
            parse_frontend_startup(&unterminated),
            Err(ProxyError::Protocol { .. })
        ));
        assert!(matches!(
            parse_frontend_startup(&0x0002_0000u32.to_be_bytes()),
            Err(ProxyError::UnsupportedProtocol { major: 2, minor: 0 })
        ));
        assert!(startup_body_len(7u32.to_be_bytes()).is_err());
        assert!(startup_body_len(10_001u32.to_be_bytes()).is_err());
        assert_eq!(startup_body_len(8u32.to_be_bytes()).unwrap(), 4);
    }

    #[test]
    fn error_response_is_well_formed() {
        let msg = error_response("57P03", "branch \"b\" is unavailable: down");
        assert_eq!(msg[0], b'E');
        let len = u32::from_be_bytes(msg[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, msg.len());
        assert_eq!(
            &msg[5..],
            b"SFATAL\0VFATAL\0C57P03\0Mbranch \"b\" is unavailable: down\0\0"
        );
    }

    fn startup_stream() -> (Vec<u8>, usize) {
        let mut s = message(b'R', &0u32.to_be_bytes());
        s.extend(message(b'S', b"server_version\x0015.0\0"));
        let mut key = 4242i32.to_be_bytes().to_vec();
        key.extend_from_slice(&(-77i32).to_be_bytes());
        s.extend(message(b'K', &key));
        s.extend(message(b'Z', b"I"));
        let end = s.len();
        // A pipelined reply right behind ReadyForQuery belongs to the splice.
        s.extend(message(b'T', &[0, 0]));
        (s, end)
    }

    #[test]
    fn scanner_finds_key_and_ready_in_one_chunk() {
        let (stream, end) = startup_stream();
        let mut scanner = BackendStartupScanner::default();
        let r = scanner.feed(&stream).unwrap();
        assert_eq!(
            r,
            ScanResult {
                key: Some(CancelKey {
                    pid: 4242,
                    secret: -77
                }),
                ready_at: Some(end),
                authenticated: true,
            }
        );
    }

    #[test]
    fn scanner_sees_authentication_ok_but_not_a_challenge() {
        let mut scanner = BackendStartupScanner::default();
        // AuthenticationSASL: code 10 and mechanism names.
        let sasl = message(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert!(!scanner.feed(&sasl).unwrap().authenticated);
        // AuthenticationSASLFinal (code 12) whose payload starts with zero bytes.
        let mut fin = 12u32.to_be_bytes().to_vec();
        fin.extend_from_slice(&[0, 0, 0, 0]);
        assert!(!scanner.feed(&message(b'R', &fin)).unwrap().authenticated);
        // An ErrorResponse carrying zero bytes is not an authentication.
        assert!(
            !scanner
                .feed(&message(b'E', &[0, 0, 0, 0]))
                .unwrap()
                .authenticated
        );
        let ok = message(b'R', &0u32.to_be_bytes());
        for split in 0..ok.len() {
            let mut scanner = BackendStartupScanner::default();
            let a = scanner.feed(&ok[..split]).unwrap().authenticated;
            let b = scanner.feed(&ok[split..]).unwrap().authenticated;
            assert!(a ^ b, "split at {split}");
        }
    }

    #[test]
    fn scanner_handles_every_split_point_and_single_bytes() {
        let (stream, end) = startup_stream();
        for split in 0..stream.len() {
            let mut scanner = BackendStartupScanner::default();
            let a = scanner.feed(&stream[..split]).unwrap();
            let b = scanner.feed(&stream[split..]).unwrap();
            let key = a.key.or(b.key);
            assert_eq!(key.map(|k| k.pid), Some(4242), "split at {split}");
            let ready = a.ready_at.or(b.ready_at.map(|r| r + split));
            assert_eq!(ready, Some(end), "split at {split}");
            assert!(a.authenticated || b.authenticated, "split at {split}");
        }
        let mut scanner = BackendStartupScanner::default();
        let mut ready = None;
        for (i, byte) in stream.iter().enumerate() {
            if let Some(r) = scanner.feed(std::slice::from_ref(byte)).unwrap().ready_at {
                ready.get_or_insert(i + r);
            }
        }
        assert_eq!(ready, Some(end));
    }

    #[test]
    fn scanner_rejects_impossible_lengths() {
        let mut scanner = BackendStartupScanner::default();
        assert!(scanner.feed(&[b'R', 0, 0, 0, 3]).is_err());
    }
}
