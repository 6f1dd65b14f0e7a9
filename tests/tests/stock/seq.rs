//! One TCP connection across the power losses: a server in the guest (busybox `nc -e`
//! running a shell loop) answers each request line with its sequence number; a client on
//! the client host sends a request, waits for its reply, and logs when each came. The
//! client fails on a reset, a closed connection, a reply out of order or a silence of two
//! minutes; the replies' times give the stall each power loss caused.

use super::*;

/// The guest's server, typed on its console: a script answering "N REQUEST" to the Nth
/// request line, run by nc on the one connection it accepts, in the background.
pub const GUEST_SERVER: &str = "printf '#!/bin/sh\\ni=0\\nwhile read -r l; do i=$((i+1)); \
     echo \"$i $l\"; done\\n' >/tmp/seq.sh; chmod +x /tmp/seq.sh; (nc -l -p 5005 -e /tmp/seq.sh &)";

/// The client: connects (retrying while the server starts), then request n, reply
/// "n+1 n", one line per reply to the log ("n SECONDS"), until the stop file appears.
const CLIENT: &str = r#"
import os, socket, sys, time
addr, stop, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.time() + 300
while True:
    try:
        s = socket.create_connection((addr, 5005), timeout=20)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(1)
s.settimeout(120)
replies = s.makefile("rb")
log = open(log_path, "w", buffering=1)
n = 0
while not os.path.exists(stop):
    s.sendall(f"{n}\n".encode())
    line = replies.readline()
    if not line:
        sys.exit(f"the server closed the connection after {n} replies")
    if line.split() != [str(n + 1).encode(), str(n).encode()]:
        sys.exit(f"reply {line!r} to request {n}")
    log.write(f"{n} {time.time():.6f}\n")
    n += 1
    time.sleep(0.05)
s.shutdown(socket.SHUT_WR)
print(f"replies {n}")
"#;

/// The client process (killed if the test ends first) and its reply log.
pub struct SeqClient {
    child: std::process::Child,
    log: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl SeqClient {
    pub fn start(hosts: &Hosts, dir: &Path, stop: &Path) -> Self {
        let log = dir.join("seq.log");
        let out = dir.join("seq.out");
        let file = std::fs::File::create(&out).expect("seq client output");
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-client", hosts.name)])
            .args(["python3", "-c", CLIENT, GUEST_ADDR])
            .arg(stop)
            .arg(&log)
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("start the sequence client");
        Self { child, log, out }
    }

    /// The replies so far: (request number, wall-clock seconds).
    pub fn replies(&self) -> Vec<(u64, f64)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (n, t) = l.split_once(' ')?;
                Some((n.parse().ok()?, t.parse().ok()?))
            })
            .collect()
    }

    /// Whether it has ended, and how (its output when it failed).
    pub fn ended(&mut self) -> Option<Result<(), String>> {
        let status = self.child.try_wait().expect("wait")?;
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        Some(if status.success() { Ok(()) } else { Err(text) })
    }
}

impl Drop for SeqClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every reply once and in order: the log holds requests 0, 1, 2, ... Returns the longest
/// gap between two replies, in seconds, or where the order broke.
pub fn check_in_order(replies: &[(u64, f64)]) -> Result<f64, String> {
    if let Some((i, (n, _))) = replies
        .iter()
        .enumerate()
        .find(|(i, (n, _))| *n != *i as u64)
    {
        return Err(format!("reply {i} of the connection answers request {n}"));
    }
    Ok(replies
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .fold(0.0, f64::max))
}

/// The stall a client saw at a power loss at `at` (wall-clock seconds): the longest gap
/// between two consecutive replies that ends after `at` and starts before `at` + 5 s. (Not
/// just the gap spanning `at`: the moment is taken just before the cable is cut, and the
/// old primary may still answer in between.)
pub fn stall_around(replies: &[(u64, f64)], at: f64) -> Option<f64> {
    replies
        .windows(2)
        .filter(|w| w[1].1 > at && w[0].1 <= at + 5.0)
        .map(|w| w[1].1 - w[0].1)
        .reduce(f64::max)
}

/// The median of sorted values (the mean of the middle two of an even count).
pub fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_spans_the_moment_and_order_is_checked() {
        let replies = [(0, 1.0), (1, 1.2), (2, 3.7), (3, 3.9)];
        assert_eq!(stall_around(&replies, 2.0), Some(2.5));
        // A reply just after the moment, then the stall: the stall counts.
        assert_eq!(stall_around(&replies, 1.1), Some(2.5));
        assert_eq!(stall_around(&replies, 3.95), None);
        assert!((check_in_order(&replies).unwrap() - 2.5).abs() < 1e-9);
        let skipped = [(0, 1.0), (2, 1.2)];
        assert!(check_in_order(&skipped).is_err());
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
        assert_eq!(median(&[1.0, 2.0, 4.0]), 2.0);
    }
}
