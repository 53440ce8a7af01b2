//! A connection that acknowledges what it reads at once (`TCP_QUICKACK` after every read).
//!
//! An OpenSSH client turns Nagle's algorithm off only for sessions with a terminal, so during
//! the key exchange it holds a small packet until its previous one is acknowledged; Linux
//! delays that acknowledgement (up to 40 ms) when it expects to piggyback it on a reply the
//! gateway has no reason to send. Measured: every new `ssh ENV+USER@NODE CMD` waited 40 ms
//! for its `KEX_ECDH_INIT` to leave the client. Quick acknowledgements end that stall; the
//! kernel forgets the mode on its own, so it is set again after each read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that acknowledges received data immediately.
pub struct QuickAck(TcpStream);

impl QuickAck {
    /// Wraps `tcp`.
    pub fn new(tcp: TcpStream) -> QuickAck {
        QuickAck(tcp)
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // A failure only costs the old delay.
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.0, true);
        }
        read
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// After a request/reply exchange Linux is in its delayed-ACK ("pingpong") mode, which
    /// reads back as TCP_QUICKACK off; each read through a `QuickAck` turns it back on.
    #[tokio::test]
    async fn every_read_leaves_quick_acks_on_and_bytes_unchanged() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = QuickAck::new(tcp);
        let mut buf = [0u8; 5];
        for round in 0..3u8 {
            client.write_all(&[b'a' + round; 5]).await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, [b'a' + round; 5]);
            assert!(
                rustix::net::sockopt::tcp_quickack(&server.0).unwrap(),
                "round {round}: delayed acknowledgements back on after a read"
            );
            server.write_all(b"reply").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"reply");
        }
    }
}
