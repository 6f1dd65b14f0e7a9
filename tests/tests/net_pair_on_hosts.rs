//! The guest's network card under the pair, on simulated hosts: the `net-echo-server`
//! tiny guest echoes every frame it receives. A client host sends it numbered frames
//! across the LAN every few milliseconds, while host A (the primary) loses power: its
//! cable is cut, then its VMM is SIGKILLed. The backup on host B goes live, announces the
//! guest's MAC from its own TAP, and the echoes come back from there.

use ftvm_e2e::*;
use std::time::Duration;

/// The client: raw Ethernet frames of an experimental EtherType to the guest's MAC, one
/// every 20 ms, numbered; it records which come back and prints one line of figures.
const CLIENT: &str = r#"
import socket, struct, sys, time
guest = bytes.fromhex("525400123456")
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
sock.bind(("eth0", 0))
me = sock.getsockname()[4]
sock.settimeout(0.001)
seconds = float(sys.argv[1])
start = time.time()
n = 0
echoed = {}
dups = 0
next_send = start
while time.time() - start < seconds:
    now = time.time()
    if now >= next_send:
        sock.send(guest + me + struct.pack("!H", 0x88b5) + struct.pack("!Q", n) + b"ftvm" * 12)
        n += 1
        next_send += 0.02
    try:
        f = sock.recv(2048)
    except socket.timeout:
        continue
    if f[6:12] == guest and f[0:6] == me and len(f) >= 22:
        seq = struct.unpack("!Q", f[14:22])[0]
        if seq in echoed:
            dups += 1
        echoed.setdefault(seq, time.time() - start)
times = sorted(echoed.values())
gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
last = times[-1] if times else 0.0
print(f"sent {n} echoed {len(echoed)} twice {dups} gap_ms {gap*1000:.0f} last_s {last:.2f}")
"#;

fn figures(out: &str) -> (u64, u64, u64, f64, f64) {
    let words: Vec<&str> = out.split_whitespace().collect();
    let get = |key: &str| -> f64 {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the client's output: {out}"))
    };
    (
        get("sent") as u64,
        get("echoed") as u64,
        get("twice") as u64,
        get("gap_ms"),
        get("last_s"),
    )
}

#[test]
fn echoes_come_back_across_a_power_loss_of_the_primary_host() {
    require_kvm_and_root();
    let hosts = Hosts::up("net");
    let (mut primary, mut backup) =
        hosts.protected_pair("echo", guest("net-echo-server"), &["--net", "tap=tap0"]);
    // The client runs 8 s; the power goes after 3.
    let client = std::thread::spawn({
        let ns = format!("{}-client", hosts.name);
        move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-c", CLIENT, "8"])
                .output()
                .expect("run the client")
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    hosts.cut("a");
    primary.kill();
    backup.wait_for("live at exit", Duration::from_secs(30));
    let out = client.join().expect("client thread");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (sent, echoed, twice, gap_ms, last_s) = figures(&text);
    eprintln!("client: {text}");
    // Echoes came before the cut (from A) and after it (from B, live), and the client saw
    // the guest fall silent only around the failover.
    assert!(echoed > sent / 2, "{text}");
    assert!(
        last_s > 6.0,
        "no echoes from the live backup: {text}\n{}",
        backup.stderr()
    );
    assert!(gap_ms < 3000.0, "{text}");
    // The backup never sent a frame the primary had sent: no number came back twice.
    assert_eq!(twice, 0, "{text}");
    backup.kill();
}
