//! The stock guest restored from its snapshot on host A serves the network and its disks:
//! the client host pings it, moves 1 MiB each way over TCP (checksums compared at both
//! ends), and talks to the key/value service; the guest writes a file to its ext4 disk,
//! reads it back from the disk itself (cache dropped, file system mounted again), and its
//! read-only disk refuses writes. The host reads the file from the image afterwards.

use super::*;

/// 1 MiB of pseudo-random bytes (Python's generator, seed 42), sent by the client host
/// (which prints their SHA-256), and received back from the guest (the client prints the
/// SHA-256 of what came and whether it equals what it sent).
const TCP_CLIENT: &str = r#"
import hashlib, random, socket, sys, time
guest, mode = sys.argv[1], sys.argv[2]
def connect(port):
    deadline = time.time() + 120
    while True:
        try:
            return socket.create_connection((guest, port), timeout=5)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
if mode == "send":
    data = random.Random(42).randbytes(1 << 20)
    s = connect(5001)
    s.settimeout(300)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    print("sent", len(data), hashlib.sha256(data).hexdigest())
else:
    want = random.Random(42).randbytes(1 << 20)
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", 5002))
    l.listen(1)
    l.settimeout(300)
    c, _ = l.accept()
    c.settimeout(300)
    got = b""
    while len(got) < len(want):
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    c.close()
    print("received", len(got), hashlib.sha256(got).hexdigest(), "equal" if got == want else "DIFFERENT")
"#;

fn client(hosts: &Hosts, mode: &'static str) -> std::thread::JoinHandle<(bool, String)> {
    let ns = format!("{}-client", hosts.name);
    std::thread::spawn(move || {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns, "python3", "-c", TCP_CLIENT, GUEST_ADDR, mode,
            ])
            .output()
            .expect("run the TCP client");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
}

/// The hex word after `word` in `text`.
fn after<'a>(text: &'a str, word: &str) -> &'a str {
    text.split_whitespace()
        .skip_while(|w| *w != word)
        .nth(2)
        .unwrap_or_else(|| panic!("no '{word} N HASH' in: {text}"))
}

pub fn restored_guest_serves_network_and_disks(
    hosts: &Hosts,
    snap: &Path,
    disks: &StockDisks,
    dir: &Path,
) {
    let copy = disks.copy_to(&dir.join("serve"));
    let mut args = vec!["run".to_string()];
    args.extend(restore_args(snap, &copy));
    let mut vm = hosts.console("a", &args);
    let t = Instant::now();
    let out = vm.run("echo second-$((7*7))", Duration::from_secs(120));
    assert!(out.contains("second-49"), "{out}");

    let (ok, ping) = hosts.exec(
        "client",
        "ping",
        &["-c", "3", "-W", "20", GUEST_ADDR],
        Duration::from_secs(120),
    );
    assert!(ok, "the client host cannot ping the guest:\n{ping}");
    let rtt = ping.lines().last().unwrap_or("").to_owned();

    // Host to guest: the guest's nc writes what arrives to a file and hashes it.
    let sender = client(hosts, "send");
    let got = vm.run(
        "nc -l -p 5001 </dev/null >/tmp/in; wc -c </tmp/in; sha256sum /tmp/in",
        Duration::from_secs(600),
    );
    let (ok, sent) = sender.join().expect("client thread");
    assert!(ok, "client: {sent}");
    let want = after(&sent, "sent");
    assert!(
        got.contains("1048576"),
        "guest received:\n{got}\nclient: {sent}"
    );
    assert!(
        got.contains(want),
        "guest's SHA-256 differs:\n{got}\nclient: {sent}"
    );

    // Guest to host: the same mebibyte back, from the guest's copy.
    let receiver = client(hosts, "receive");
    std::thread::sleep(Duration::from_millis(500));
    let out = vm.run(
        &format!("nc {} 5002 </tmp/in >/dev/null", Hosts::addr("client")),
        Duration::from_secs(600),
    );
    let (ok, received) = receiver.join().expect("client thread");
    assert!(
        ok && received.contains("equal"),
        "client: {received}\nguest:\n{out}"
    );
    assert_eq!(
        after(&received, "received"),
        want,
        "what came back differs from what the guest hashed:\n{out}\nclient: {received}"
    );

    // The data disk: write, drop every cached page, mount again, read from the disk.
    let out = vm.run(
        "cp /tmp/in /mnt/from-client.bin && sync && umount /mnt && echo 3 >/proc/sys/vm/drop_caches && mount /dev/vda /mnt && sha256sum /mnt/from-client.bin",
        Duration::from_secs(600),
    );
    assert!(out.contains(want), "read back from the disk:\n{out}");
    assert!(out.contains("status 0"), "{out}");

    // The read-only disk: its file reads, a write is refused, by the file system and by
    // the block device.
    let out = vm.run(
        "mkdir -p /ro && mount /dev/vdb /ro; cat /ro/seed.txt; echo x >/ro/new; dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync",
        Duration::from_secs(120),
    );
    assert!(out.contains(SEED_TEXT), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(
        !out.contains("status 0"),
        "dd wrote to the read-only disk:\n{out}"
    );

    // The key/value service the snapshot started answers the client host.
    let kvclient = ftvm_e2e::top().join("build/kv/bin/kvclient");
    let kv = kvclient.to_str().expect("utf-8");
    let vs = format!("{GUEST_ADDR}:7000");
    // The service's first view forms after the restore (pings once a second of guest
    // time, which runs slower than the host's here): the clerk retries for two minutes.
    let (ok, put) = hosts.exec(
        "client",
        kv,
        &[
            "--vs",
            &vs,
            "--timeout-ms",
            "120000",
            "put",
            "greeting",
            "hello-from-the-client",
        ],
        Duration::from_secs(180),
    );
    assert!(ok, "kvclient put: {put}");
    let (ok, get) = hosts.exec(
        "client",
        kv,
        &["--vs", &vs, "--timeout-ms", "120000", "get", "greeting"],
        Duration::from_secs(180),
    );
    assert!(
        ok && get.contains("hello-from-the-client"),
        "kvclient get: {get}"
    );

    assert_eq!(vm.exit(3, Duration::from_secs(300)), 3, "{}", vm.stderr());
    assert!(vm.stdout().contains("powering off with status 3"));
    assert_eq!(
        sha256_hex(&copy.read_data_file("from-client.bin")),
        want,
        "the file in the image, read by the host"
    );
    eprintln!(
        "stock guest with NIC and disks: ping {rtt}; 1 MiB each way over TCP, ext4 write \
         and read-back, read-only disk, key/value put/get: {:.0} s",
        t.elapsed().as_secs_f64()
    );
    for line in vm
        .stderr()
        .lines()
        .filter(|l| l.contains("frames") || l.contains("disk"))
    {
        eprintln!("  {line}");
    }
}
