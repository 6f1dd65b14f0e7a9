//! A capture on one host's TAP: every frame the VMM there writes towards the LAN whose
//! source is a given MAC, with the kernel's receive time, for a fixed time. The tests use
//! it to show which host puts a guest's frames on the LAN, and when.

use crate::Hosts;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// The sniffer, run on the host: a packet socket on tap0 with kernel timestamps. A frame
/// the VMM writes into its TAP arrives on tap0 (not PACKET_OUTGOING, which are the frames
/// the host's bridge sends to the VMM). One line per frame: "SECONDS ETHERTYPE".
const SNIFFER: &str = r#"
import socket, struct, sys, time
mac = bytes.fromhex(sys.argv[1])
seconds = float(sys.argv[2])
so_timestampns = getattr(socket, "SO_TIMESTAMPNS", 35)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("tap0", 0))
s.setsockopt(socket.SOL_SOCKET, so_timestampns, 1)
s.settimeout(0.1)
end = time.time() + seconds
print("capturing", flush=True)
while time.time() < end:
    try:
        data, anc, _flags, addr = s.recvmsg(4096, 256)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING or data[6:12] != mac:
        continue
    t = time.time()
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == so_timestampns and len(value) >= 16:
            sec, nsec = struct.unpack("qq", value[:16])
            t = sec + nsec / 1e9
    print(f"{t:.6f} {data[12:14].hex()}", flush=True)
"#;

/// A capture running on a host; [`Capture::frames`] waits for its end.
pub struct Capture {
    host: String,
    run: JoinHandle<std::io::Result<Output>>,
}

/// The wall clock in seconds, as the captures' timestamps are.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Capture {
    /// Capture on `host`'s tap0 the frames from `mac` (12 hex digits) for `seconds`.
    pub fn start(hosts: &Hosts, host: &str, mac: &str, seconds: u32) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-{host}", hosts.name)])
            .args(["python3", "-c", SNIFFER, mac, &seconds.to_string()]);
        Self {
            host: host.to_owned(),
            run: std::thread::spawn(move || cmd.output()),
        }
    }

    /// The times of the frames seen, once the capture has ended; panics if it failed.
    pub fn frames(self) -> Vec<f64> {
        let out = self
            .run
            .join()
            .expect("capture thread")
            .expect("run the capture");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("capturing"),
            "the capture on host {} failed: {text}{}",
            self.host,
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }
}
