//! A clamd INSTREAM client (clamd(8), "INSTREAM"): the file is streamed to clamd while it
//! crosses the relay, in the same chunks, and the verdict is read after the last one.
//!
//! Protocol: `zINSTREAM\0`, then chunks each prefixed with its length as a 4-byte big-endian
//! integer, then a zero-length chunk; clamd answers one NUL-terminated line: `stream: OK`,
//! `stream: <signature> FOUND`, or `... ERROR` (for instance `INSTREAM size limit exceeded`
//! past its `StreamMaxLength`). Any failure — connect, write, timeout, an ERROR line — is a
//! [`ScanVerdict::Failed`], which `on_scanner_error` turns into block or pass; never a silent
//! "clean".

use std::time::Duration;

use stanzawall_core::config::ClamdAddress;
use stanzawall_core::transfer::ScanVerdict;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest answer line read from clamd.
const MAX_REPLY: usize = 4096;
/// Longest chunk sent in one frame (clamd's default `StreamMaxLength` is far larger).
const MAX_CHUNK: usize = 64 * 1024;

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// One INSTREAM scan in progress.
pub struct Scan {
    socket: Option<Box<dyn Socket>>,
    /// Why the scan already failed (connect or write error): the verdict will be this.
    failed: Option<String>,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan").field("connected", &self.socket.is_some()).field("failed", &self.failed).finish()
    }
}

impl Scan {
    /// Connect to clamd and start an INSTREAM scan (within `timeout`). A failure is kept and
    /// reported as the verdict; the transfer itself goes on until then.
    pub async fn start(addr: &ClamdAddress, timeout: Duration) -> Scan {
        let connect = async {
            let mut s: Box<dyn Socket> = match addr {
                ClamdAddress::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
                ClamdAddress::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
            };
            s.write_all(b"zINSTREAM\0").await?;
            Ok::<_, std::io::Error>(s)
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(s)) => Scan { socket: Some(s), failed: None },
            Ok(Err(e)) => Scan { socket: None, failed: Some(format!("clamd unreachable: {e}")) },
            Err(_) => Scan { socket: None, failed: Some("clamd did not accept the connection in time".into()) },
        }
    }

    /// Stream `data` to clamd.
    pub async fn send(&mut self, data: &[u8]) {
        let Some(s) = self.socket.as_mut() else { return };
        for chunk in data.chunks(MAX_CHUNK) {
            let len = (chunk.len() as u32).to_be_bytes();
            let r = async {
                s.write_all(&len).await?;
                s.write_all(chunk).await
            }
            .await;
            if let Err(e) = r {
                // clamd closes the stream when it refuses more (size limit): its reply says why.
                let reply = read_reply(s).await.ok();
                self.failed = Some(match reply {
                    Some(r) if !r.is_empty() => format!("clamd: {r}"),
                    _ => format!("clamd write failed: {e}"),
                });
                self.socket = None;
                return;
            }
        }
    }

    /// End the stream and read the verdict (within `timeout`).
    pub async fn verdict(mut self, timeout: Duration) -> ScanVerdict {
        if let Some(why) = self.failed.take() {
            return ScanVerdict::Failed(why);
        }
        let Some(mut s) = self.socket.take() else { return ScanVerdict::Failed("clamd not connected".into()) };
        let finish = async {
            s.write_all(&[0, 0, 0, 0]).await?;
            s.flush().await?;
            read_reply(&mut s).await
        };
        match tokio::time::timeout(timeout, finish).await {
            Ok(Ok(line)) => parse_reply(&line),
            Ok(Err(e)) => ScanVerdict::Failed(format!("clamd: {e}")),
            Err(_) => ScanVerdict::Failed("clamd gave no verdict in time".into()),
        }
    }
}

async fn read_reply(s: &mut Box<dyn Socket>) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while out.len() < MAX_REPLY {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if let Some(end) = out.iter().position(|&b| b == 0) {
            out.truncate(end);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// clamd's answer line to a verdict.
pub fn parse_reply(line: &str) -> ScanVerdict {
    let body = line.strip_prefix("stream:").map_or(line, str::trim);
    if body == "OK" {
        ScanVerdict::Clean
    } else if let Some(sig) = body.strip_suffix(" FOUND") {
        ScanVerdict::Infected(sig.trim().to_owned())
    } else if body.is_empty() {
        ScanVerdict::Failed("clamd closed without a verdict".into())
    } else {
        ScanVerdict::Failed(format!("clamd: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK"), ScanVerdict::Clean);
        assert_eq!(
            parse_reply("stream: Local.EICAR.UNOFFICIAL FOUND"),
            ScanVerdict::Infected("Local.EICAR.UNOFFICIAL".into())
        );
        assert!(matches!(parse_reply("INSTREAM size limit exceeded. ERROR"), ScanVerdict::Failed(_)));
        assert!(matches!(parse_reply(""), ScanVerdict::Failed(_)));
    }
}
