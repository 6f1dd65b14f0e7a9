//! Host-side network plumbing for the NIC tests: a TAP created for one test (removed on
//! drop, whatever happens) and a raw AF_PACKET socket on it to send and receive frames.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The EtherType of the test frames (IEEE local experimental 1): nothing else on the TAP
/// uses it, so the socket sees only the guest's echoes.
pub const TEST_ETHERTYPE: u16 = 0x88b5;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TAP device that exists for the life of this value.
pub struct TapGuard {
    pub name: String,
}

impl TapGuard {
    /// A new TAP, up, without IPv6 (whose router solicitations would reach the guest).
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("ftn{}x{n}", std::process::id() % 1_000_000);
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        let guard = Self { name };
        let v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", guard.name);
        if std::path::Path::new(&v6).exists() {
            std::fs::write(&v6, "1").expect("disable IPv6 on the TAP");
        }
        ip(&["link", "set", &guard.name, "up"]);
        guard
    }

    /// Wait until a VMM has attached to the TAP (its carrier comes up).
    pub fn wait_attached(&self, timeout: Duration) {
        let path = format!("/sys/class/net/{}/carrier", self.name);
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == "1") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no VMM attached to {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A raw packet socket bound to one interface and the test EtherType.
pub struct PacketSocket {
    fd: i32,
    ifindex: i32,
}

impl PacketSocket {
    pub fn bind(ifname: &str) -> Self {
        let proto = TEST_ETHERTYPE.to_be();
        // SAFETY: socket(2) with constant arguments; the fd is owned by the value.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name that lives across the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {ifname}");
        let sock = Self { fd, ifindex };
        let addr = sock.address(&[0; 6]);
        // SAFETY: `addr` is a sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(rc, 0);
        sock
    }

    fn address(&self, dest: &[u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = TEST_ETHERTYPE.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(dest);
        addr
    }

    /// Send one whole Ethernet frame out of the interface (to whoever reads the TAP).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the frame's bytes are readable for its length.
        let n = unsafe { libc::send(self.fd, frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame of the test EtherType the interface received, within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Test frame `i`: to `dest` from a made-up host MAC, of a length that grows with `i`,
/// its payload numbered so that each frame is distinct.
pub fn test_frame(dest: &[u8; 6], i: usize) -> Vec<u8> {
    let mut f = dest.to_vec();
    f.extend_from_slice(&[0x02, 0xaa, 0xbb, 0xcc, 0xdd, i as u8]);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend((0..46 + i * 150).map(|k| (k as u8) ^ (i as u8).wrapping_mul(37)));
    f
}

/// The echo the guest sends back: the same frame with its two MACs swapped.
pub fn echo_of(frame: &[u8]) -> Vec<u8> {
    let mut e = frame[6..12].to_vec();
    e.extend_from_slice(&frame[..6]);
    e.extend_from_slice(&frame[12..]);
    e
}
