//! The few Postgres wire messages the proxy tests write and read by hand.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A protocol 3.0 StartupMessage for user `app`, database `postgres`.
pub fn startup_message() -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0app\0database\0postgres\0\0");
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Reads one backend message: (type, body).
pub async fn try_read_message(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    Ok((header[0], body))
}

/// [`try_read_message`], for a server that must answer.
#[allow(dead_code)] // not every test binary reads infallibly
pub async fn read_message(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    try_read_message(stream)
        .await
        .expect("a whole backend message")
}
