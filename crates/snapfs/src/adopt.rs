//! Taking over a live FUSE connection: how a restarted server serves a mount it did not make.
//!
//! The kernel sends `FUSE_INIT` once per connection, but fuser only builds a session after
//! reading one. So the new server replays the first one: the [`Offer`] the kernel made (kept
//! by the keeper) is written as an INIT request into a socket pair, fuser handshakes over the
//! socket (its reply goes nowhere), and then the socket's descriptor number is pointed at the
//! real `/dev/fuse` connection with `dup3` — before the session reads anything else, so no
//! request can be lost between the two. Last, `FUSE_NOTIFY_RESEND` (Linux 6.9) makes the
//! kernel send again every request the dead server had read but not answered.

use fuser::{Config, Filesystem, InitFlags, KernelConfig, Session};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// `FUSE_INIT`'s opcode.
const FUSE_INIT: u32 = 26;
/// The notify code asking the kernel to resend the requests a server read but did not answer.
const FUSE_NOTIFY_RESEND: i32 = 7;

/// What the kernel offered in a connection's `FUSE_INIT`: its protocol minor version and
/// capability flags. Written as `MINOR:FLAGS` (hex flags) on the command line of a restarted
/// server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The kernel's FUSE protocol minor version (the major is 7).
    pub minor: u32,
    /// The capabilities the kernel offered (`flags | flags2 << 32`).
    pub flags: u64,
}

impl Offer {
    /// The offer seen by a filesystem's `init`.
    pub fn of(config: &KernelConfig) -> Offer {
        Offer {
            minor: config.kernel_abi().1,
            flags: config.capabilities().bits(),
        }
    }
}

impl std::fmt::Display for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{:x}", self.minor, self.flags)
    }
}

impl std::str::FromStr for Offer {
    type Err = String;
    fn from_str(s: &str) -> Result<Offer, String> {
        let bad = || format!("bad FUSE offer {s:?} (want MINOR:HEXFLAGS)");
        let (m, f) = s.split_once(':').ok_or_else(bad)?;
        Ok(Offer {
            minor: m.parse().map_err(|_| bad())?,
            flags: u64::from_str_radix(f, 16).map_err(|_| bad())?,
        })
    }
}

/// The bytes of an INIT request carrying `offer` (`fuse_in_header` + `fuse_init_in`).
fn init_request(offer: Offer) -> Vec<u8> {
    let flags = offer.flags | InitFlags::FUSE_INIT_EXT.bits();
    let words: [u32; 5] = [
        7,
        offer.minor,
        128 * 1024,
        flags as u32,
        (flags >> 32) as u32,
    ];
    let len = 40 + 64;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_le_bytes());
    b.extend_from_slice(&FUSE_INIT.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // unique
    b.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    b.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.resize(len, 0);
    b
}

/// A session on the live connection `fuse`, whose INIT happened long ago with `offer`.
/// Requests the previous server left unanswered are sent again.
pub fn session<FS: Filesystem>(
    fs: FS,
    fuse: OwnedFd,
    offer: Offer,
    config: Config,
) -> std::io::Result<Session<FS>> {
    // A datagram pair keeps the request in one piece, as /dev/fuse does.
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair()?;
    theirs.send(&init_request(offer))?;
    let slot = ours.as_raw_fd();
    let acl = config.acl;
    let session = Session::from_fd(fs, OwnedFd::from(ours), acl, config)?;
    // The session's descriptor number now names the connection; nothing has read from it yet.
    // SAFETY: `slot` is the session's own descriptor, open as long as the session is; dup3
    // atomically makes it a second descriptor of `fuse` (which is closed when dropped here).
    if unsafe { libc::dup3(fuse.as_raw_fd(), slot, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(theirs);
    resend(&session)?;
    Ok(session)
}

/// Asks the kernel to send again every request of `conn` that was read but not answered.
fn resend(conn: &impl AsFd) -> std::io::Result<()> {
    let mut msg = [0u8; 16];
    msg[..4].copy_from_slice(&16u32.to_le_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    let mut f = std::fs::File::from(conn.as_fd().try_clone_to_owned()?);
    match f.write(&msg) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "this kernel cannot resend FUSE requests (Linux < 6.9): a call that was in \
                 the old server's hands when it died waits until it is interrupted"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_round_trips_through_its_text() {
        let o = Offer {
            minor: 44,
            flags: 0x1_2345_6789,
        };
        assert_eq!(o.to_string().parse::<Offer>().unwrap(), o);
        assert!("44".parse::<Offer>().is_err());
        assert!("x:1".parse::<Offer>().is_err());
    }

    #[test]
    fn init_request_has_the_kernel_layout() {
        let b = init_request(Offer {
            minor: 41,
            flags: 1 << 41 | 1,
        });
        assert_eq!(b.len(), 104);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 104);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), FUSE_INIT);
        assert_eq!(u32::from_le_bytes(b[44..48].try_into().unwrap()), 41);
        let flags = u32::from_le_bytes(b[52..56].try_into().unwrap());
        assert_eq!(flags, 1 | (1 << 30));
        assert_eq!(u32::from_le_bytes(b[56..60].try_into().unwrap()), 1 << 9);
    }
}
