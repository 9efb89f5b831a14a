//! Byte streams of one connection: a socket that may be upgraded to TLS mid-stream.
//!
//! Owns only moving bytes. [`Rewind`] replays bytes that were read before a TLS handshake began
//! (a client may send its ClientHello right behind `<starttls/>`), so they reach TLS and never
//! the XML parser. It can also drop XML whitespace in front of the first TLS record: clients such
//! as go-sendxmpp write `<starttls/>\n`, and that newline is stream-level whitespace of the
//! plaintext stream, not TLS data (a TLS record starts with a content-type byte, never 0x09,
//! 0x0A, 0x0D or 0x20), so dropping it is unambiguous.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream with bytes to replay before reading from the socket again.
#[derive(Debug)]
pub struct Rewind {
    prefix: Vec<u8>,
    offset: usize,
    skip_whitespace: bool,
    inner: TcpStream,
}

fn is_xml_whitespace(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Rewind {
    /// Wrap a socket with nothing to replay.
    pub fn new(inner: TcpStream) -> Self {
        Rewind { prefix: Vec::new(), offset: 0, skip_whitespace: false, inner }
    }

    /// Queue bytes to be read before the socket's.
    pub fn rewind(&mut self, bytes: Vec<u8>) {
        let mut rest = bytes;
        rest.extend_from_slice(&self.prefix[self.offset..]);
        self.prefix = rest;
        self.offset = 0;
    }

    /// Drop XML whitespace before the next non-whitespace byte (see the module docs).
    pub fn skip_leading_whitespace(&mut self) {
        self.skip_whitespace = true;
    }

    /// The socket underneath (socket options such as linger).
    pub fn socket(&self) -> &TcpStream {
        &self.inner
    }

    /// Acknowledge what was received now instead of after the kernel's delayed-ACK timer.
    ///
    /// After a TLS 1.3 handshake the server has nothing to send until the client's stream
    /// header arrives — no session tickets either, when the client did not offer resumption
    /// (tsung's Erlang client) — while a client with Nagle's algorithm on holds that header
    /// until its Finished is acknowledged: each side waits for the other for the delayed-ACK
    /// timeout (40 ms on Linux) before the first stream header. Linux sends a pending ACK at
    /// once when TCP_QUICKACK is set.
    pub fn ack_now(&self) {
        let _ = socket2::SockRef::from(&self.inner).set_tcp_quickack(true);
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.skip_whitespace {
            if this.offset < this.prefix.len() {
                let ws = this.prefix[this.offset..].iter().take_while(|b| is_xml_whitespace(b)).count();
                this.offset += ws;
                if this.offset < this.prefix.len() {
                    this.skip_whitespace = false;
                }
                continue;
            }
            let mut tmp = [0u8; 2048];
            let mut rb = ReadBuf::new(&mut tmp);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.prefix = rb.filled().to_vec();
            this.offset = 0;
        }
        if this.offset < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.offset);
            buf.put_slice(&this.prefix[this.offset..this.offset + n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One leg of a connection: plaintext, or TLS as server (client leg) or client (backend leg).
#[derive(Debug)]
pub enum Stream {
    /// Plaintext.
    Plain(Rewind),
    /// TLS terminated here (the client leg).
    Server(Box<tokio_rustls::server::TlsStream<Rewind>>),
    /// TLS initiated here (the backend leg).
    Client(Box<tokio_rustls::client::TlsStream<Rewind>>),
    /// An in-process pipe: the client leg of a BOSH session, fed by the HTTP connections
    /// that carry its requests (`conn::bosh`).
    Local(tokio::io::DuplexStream),
    /// Transient state while a handshake owns the socket.
    Upgrading,
}

impl Stream {
    /// See [`Rewind::ack_now`]; for the client leg once its TLS handshake completed.
    pub fn ack_now(&self) {
        match self {
            Stream::Plain(r) => r.ack_now(),
            Stream::Server(tls) => tls.get_ref().0.ack_now(),
            Stream::Client(tls) => tls.get_ref().0.ack_now(),
            Stream::Local(_) | Stream::Upgrading => {}
        }
    }

    /// The TCP socket of a leg (`None`: an in-process pipe, or mid-handshake).
    pub fn socket(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(r) => Some(r.socket()),
            Stream::Server(tls) => Some(tls.get_ref().0.socket()),
            Stream::Client(tls) => Some(tls.get_ref().0.socket()),
            Stream::Local(_) | Stream::Upgrading => None,
        }
    }

    /// Take the plaintext socket for a TLS handshake.
    pub fn take_plain(&mut self) -> io::Result<Rewind> {
        match std::mem::replace(self, Stream::Upgrading) {
            Stream::Plain(r) => Ok(r),
            other => {
                *self = other;
                Err(io::Error::other("stream is already TLS"))
            }
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut *$self {
            Stream::Plain($s) => $e,
            Stream::Server($s) => $e,
            Stream::Client($s) => $e,
            Stream::Local($s) => $e,
            Stream::Upgrading => Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (Rewind, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Rewind::new(accepted.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn replays_prefix_then_socket_and_skips_leading_whitespace() {
        let (mut r, mut peer) = pair().await;
        // `<starttls/>\n` then a ClientHello: the newline was buffered with the element.
        r.rewind(b"\n \r\n".to_vec());
        r.skip_leading_whitespace();
        peer.write_all(b"\t\n\x16\x03\x01rest").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"\x16\x03\x01rest");
    }

    #[tokio::test]
    async fn whitespace_inside_the_stream_is_kept_once_data_started() {
        let (mut r, mut peer) = pair().await;
        r.rewind(b" \x16 a".to_vec());
        r.skip_leading_whitespace();
        peer.write_all(b" b").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"\x16 a b");
    }
}
