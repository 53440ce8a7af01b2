//! Upgraded streams that end when silent: bytes are copied both ways between two streams
//! until either ends, or until neither has sent anything for `[connections]
//! stream_idle_timeout` (a WebSocket whose both ends went away without a word would otherwise
//! hold its connection, counted in the node's caps, for ever).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last came from either side.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    /// Bytes came now.
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Returns once nothing has come for `idle`.
    async fn silent_for(&self, idle: Duration) {
        loop {
            let until =
                self.start + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }
}

/// A stream whose reads mark [`Activity`].
struct Watched<'a, S> {
    inner: S,
    seen: &'a Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.seen.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies bytes both ways between `a` and `b` until either ends, or neither sends anything
/// for `idle`; whether it ended for silence.
pub async fn copy<A, B>(a: A, b: B, idle: Duration) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let seen = Activity {
        start: Instant::now(),
        last: AtomicU64::new(0),
    };
    let mut a = Watched {
        inner: a,
        seen: &seen,
    };
    let mut b = Watched {
        inner: b,
        seen: &seen,
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => false,
        () = seen.silent_for(idle) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes either way keep the copy going past the idle time; silence ends it, and the
    /// ends' streams are closed.
    #[tokio::test(start_paused = true)]
    async fn a_copy_ends_after_silence_only() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let idle = Duration::from_secs(60);
        let copy = tokio::spawn(copy(a, b, idle));
        let mut byte = [0u8];
        for _ in 0..3 {
            tokio::time::sleep(idle / 2).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut byte).await.unwrap();
            tokio::time::sleep(idle / 2).await;
            server.write_all(b"y").await.unwrap();
            client.read_exact(&mut byte).await.unwrap();
        }
        assert!(!copy.is_finished());
        assert!(copy.await.unwrap());
        assert_eq!(client.read(&mut byte).await.unwrap(), 0);
        assert_eq!(server.read(&mut byte).await.unwrap(), 0);
    }
}
