//! The guest's network card under the pair, on simulated hosts: the `net-echo-server`
//! tiny guest echoes every frame it receives. A client host sends it numbered frames
//! across the LAN every few milliseconds, while host A (the primary) loses power: its
//! cable is cut, then its VMM is SIGKILLed. The backup on host B goes live, announces the
//! guest's MAC from its own TAP, and the echoes come back from there. And the channel
//! between A and B broken with both alive and on the LAN: one VMM goes on, and the other's
//! TAP is silent from then on, as captures on both hosts show.

use ftvm_e2e::capture::{self, Capture};
use ftvm_e2e::*;
use std::process::Output;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The echo guest's MAC (the default of `--net`), as the captures want it.
const GUEST_MAC: &str = "525400123456";

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

/// The client on the client host for `seconds`.
fn client(hosts: &Hosts, seconds: u32) -> JoinHandle<Output> {
    let ns = format!("{}-client", hosts.name);
    std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", CLIENT])
            .arg(seconds.to_string())
            .output()
            .expect("run the client")
    })
}

/// The client's line once it has ended; panics if it failed.
fn client_line(client: JoinHandle<Output>) -> String {
    let out = client.join().expect("client thread");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("client: {text}");
    text
}

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
    let client = client(&hosts, 8);
    std::thread::sleep(Duration::from_secs(3));
    hosts.cut("a");
    primary.kill();
    // A backup that halts here lost the test-and-set: its primary went on alone before
    // the kill (a starved backup counted lost, say); what the primary said tells why.
    let live = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        backup.wait_for("live at exit", Duration::from_secs(30))
    }));
    if let Err(e) = live {
        panic!(
            "{}\n--- the primary said:\n{}",
            e.downcast_ref::<String>()
                .map_or("the backup did not go live", |s| s),
            primary.stderr()
        );
    }
    let text = client_line(client);
    let (sent, echoed, twice, gap_ms, last_s) = figures(&text);
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

#[test]
fn a_split_channel_leaves_one_vmm_and_the_other_tap_silent() {
    require_kvm_and_root();
    let hosts = Hosts::up("split-net");
    let (mut primary, mut backup) =
        hosts.protected_pair("echo", guest("net-echo-server"), &["--net", "tap=tap0"]);
    // Both hosts' TAPs watched from before the split to the client's end and beyond.
    let on_a = Capture::start(&hosts, "a", GUEST_MAC, 12);
    let on_b = Capture::start(&hosts, "b", GUEST_MAC, 12);
    let client = client(&hosts, 10);
    std::thread::sleep(Duration::from_secs(3));
    let split_at = capture::now();
    hosts.split();
    // Neither hears the other; the test-and-set decides: one halts, the other goes on.
    let t = Instant::now();
    let (loser, status) = loop {
        match (primary.try_wait(), backup.try_wait()) {
            (Some(p), None) => break ("a", p),
            (None, Some(b)) => break ("b", b),
            (Some(p), Some(b)) => panic!(
                "both VMMs ended (primary {p}, backup {b}):\n{}\n{}",
                primary.stderr(),
                backup.stderr()
            ),
            (None, None) => {}
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "neither VMM halted after the split:\n{}\n{}",
            primary.stderr(),
            backup.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let (winner, lost) = if loser == "a" {
        (&mut backup, &primary)
    } else {
        (&mut primary, &backup)
    };
    assert_eq!(status, 5, "the loser must halt:\n{}", lost.stderr());
    assert!(lost.stderr().contains("halted"), "{}", lost.stderr());
    let text = client_line(client);
    assert_eq!(winner.try_wait(), None, "{}", winner.stderr());
    let (a, b) = (on_a.frames(), on_b.frames());
    let (silent, live) = if loser == "a" { (a, b) } else { (b, a) };
    // The loser's last frames can only be ones acknowledged before the split, written
    // within the peer timeout; a backup never writes to its TAP before it is live.
    let late: Vec<f64> = silent
        .iter()
        .map(|t| t - split_at)
        .filter(|dt| *dt > 0.3)
        .collect();
    assert!(
        late.is_empty(),
        "host {loser}'s TAP sent the guest's frames {late:?} s after the split"
    );
    if loser == "b" {
        assert!(silent.is_empty(), "the backup wrote to its TAP: {silent:?}");
    }
    let after = live.iter().filter(|t| **t > split_at + 1.0).count();
    let last_lost = silent.iter().map(|t| t - split_at).fold(f64::MIN, f64::max);
    eprintln!(
        "split: host {loser} halted; its TAP's last guest frame {}; the other TAP sent {after} after the split",
        if silent.is_empty() {
            "none".to_owned()
        } else {
            format!("{:.0} ms from the split", last_lost * 1e3)
        }
    );
    // The client kept being answered, by the winner, with nothing echoed twice.
    let (_, _, twice, _, last_s) = figures(&text);
    assert!(
        after > 50,
        "the winner's TAP was nearly silent: {after} frames"
    );
    assert!(last_s > 8.0, "{text}");
    assert_eq!(twice, 0, "{text}");
    winner.kill();
}
