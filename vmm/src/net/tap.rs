//! A host TAP device, opened (never created) by name: `/dev/net/tun`, TUNSETIFF with
//! IFF_TAP | IFF_NO_PI, non-blocking. Reads and writes are whole Ethernet frames.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Longest interface name Linux takes (IFNAMSIZ less the NUL).
const MAX_NAME: usize = 15;
/// `struct ifreq`: the name, then a union whose first member is the flags (short).
const IFREQ_LEN: usize = 40;

/// Why a TAP name is refused or the TAP cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty.
    #[error("TAP name is empty")]
    EmptyName,
    /// The name is longer than an interface name can be (15 bytes).
    #[error("TAP name '{0}' is longer than 15 bytes")]
    LongName(String),
    /// The name has '/', whitespace or a control character, or is "." or "..".
    #[error("TAP name '{0}' contains '/', whitespace or a control character")]
    BadName(String),
    /// No network interface has this name.
    #[error("TAP device {0} does not exist (create it first, e.g. 'ip tuntap add {0} mode tap')")]
    Missing(String),
    /// The interface exists but is not a TUN/TAP device.
    #[error("network interface {0} is not a TUN/TAP device")]
    NotTunTap(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun for TAP {name}")]
    OpenTun {
        /// The TAP's name.
        name: String,
        /// Why the open failed.
        #[source]
        source: std::io::Error,
    },
    /// TUNSETIFF refused the name: a TUN rather than a TAP, or a TAP already in use.
    #[error("cannot attach to TAP {name} (is it a TAP, not a TUN, and free?)")]
    Attach {
        /// The TAP's name.
        name: String,
        /// The error TUNSETIFF returned.
        #[source]
        source: std::io::Error,
    },
}

/// What a name must look like to be an interface name.
pub fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() {
        return Err(TapError::EmptyName);
    }
    if name.len() > MAX_NAME {
        return Err(TapError::LongName(name.to_owned()));
    }
    if name
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        || name == "."
        || name == ".."
    {
        return Err(TapError::BadName(name.to_owned()));
    }
    Ok(())
}

/// An open TAP, shared by the receive thread and the transmit port.
#[derive(Debug, Clone)]
pub struct Tap {
    file: Arc<File>,
    name: String,
}

impl Tap {
    /// Attach to the existing TAP `name`. TUNSETIFF would create a missing one (we may
    /// hold CAP_NET_ADMIN): a name that is no TUN/TAP interface is refused first.
    pub fn open(name: &str) -> Result<Self, TapError> {
        check_name(name)?;
        let sys = Path::new("/sys/class/net").join(name);
        if !sys.exists() {
            return Err(TapError::Missing(name.to_owned()));
        }
        if !sys.join("tun_flags").exists() {
            return Err(TapError::NotTunTap(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                source,
            })?;
        let mut ifreq = [0u8; IFREQ_LEN];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
        ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads (and may write back) a `struct ifreq`, 40 bytes on
        // x86-64; `ifreq` is that many bytes, lives across the call, and the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, ifreq.as_mut_ptr()) };
        if rc < 0 {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        tracing::info!(tap = name, "attached to TAP");
        Ok(Self {
            file: Arc::new(file),
            name: name.to_owned(),
        })
    }

    /// The interface name of the TAP.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wait up to `timeout` for a frame to read; true when one is there.
    pub fn wait_readable(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match rc {
            n if n > 0 => Ok(true),
            0 => Ok(false),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// One frame into `buf` (non-blocking: `WouldBlock` when there is none).
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.file).read(buf)
    }

    /// One frame out (non-blocking: `WouldBlock` when the TAP's queue is full).
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&*self.file).write(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        assert!(matches!(check_name(""), Err(TapError::EmptyName)));
        assert!(matches!(
            check_name("a234567890123456"),
            Err(TapError::LongName(_))
        ));
        assert!(matches!(check_name("a b"), Err(TapError::BadName(_))));
        assert!(matches!(check_name(".."), Err(TapError::BadName(_))));
        assert!(check_name("tap0").is_ok());
        assert!(matches!(
            Tap::open("ftvm-no-such0"),
            Err(TapError::Missing(_))
        ));
        // Every Linux host has a loopback interface, which is no TAP.
        assert!(matches!(Tap::open("lo"), Err(TapError::NotTunTap(_))));
    }
}
