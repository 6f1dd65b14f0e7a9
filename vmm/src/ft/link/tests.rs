//! The link's tests: message reading, and the back-pressure verdict over a real (loopback)
//! secure connection.

use super::*;
use ft_log::channel::encode_message;

#[test]
fn recv_reports_a_closed_and_a_damaged_stream() {
    let mut dec: MessageDecoder<ToPrimary> = MessageDecoder::new();
    let mut bytes = ft_log::channel::encode_channel_header();
    bytes.extend(encode_message(&ToPrimary::Ack { ordinal: 7 }));
    let mut r = std::io::Cursor::new(bytes.clone());
    assert_eq!(
        recv(&mut r, &mut dec).unwrap(),
        Some(ToPrimary::Ack { ordinal: 7 })
    );
    assert!(matches!(recv(&mut r, &mut dec), Err(LinkError::Closed)));
    let mut damaged = bytes;
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    let mut dec: MessageDecoder<ToPrimary> = MessageDecoder::new();
    let e = recv(&mut std::io::Cursor::new(damaged), &mut dec).unwrap_err();
    assert!(matches!(e, LinkError::Damaged(_)), "{e}");
}

/// Both ends of a secure loopback connection (primary's, backup's).
fn secure_pair() -> (SecureStream, SecureStream) {
    use crate::ft::key::ChannelKey;
    use std::net::{TcpListener, TcpStream};

    let key = ChannelKey::random().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let k = key.clone();
    let backup = std::thread::spawn(move || {
        let tcp = TcpStream::connect(addr).unwrap();
        SecureStream::connect(tcp, &k, Duration::from_secs(10)).unwrap()
    });
    let (tcp, _) = listener.accept().unwrap();
    let primary_end = SecureStream::accept(tcp, &key, Duration::from_secs(10)).unwrap();
    (primary_end, backup.join().unwrap())
}

/// The link's failure verdict, polled every 2 ms; `what` (the failure the test expects)
/// never being detected within 30 s of `started` fails the test.
fn wait_for_failure(link: &Link, started: std::time::Instant, what: &str) -> String {
    loop {
        if let Some(why) = link.failure() {
            return why;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the {what} was never detected"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn quiet_acks() -> PrimaryAcks {
    PrimaryAcks {
        sink: ConsoleSink::new(0, None, false),
        delta_request: Arc::default(),
        acked: Arc::default(),
        guest_ordinal: Arc::default(),
    }
}

/// A backup that sends its header and one heartbeat and then nothing, its connection
/// open (a partition): the primary's link fails with the timeout, soon after it (the
/// receiver confirms the silence by looking, every 2 to 10 ms), and not before.
#[test]
fn a_silent_peer_fails_after_the_timeout() {
    let (primary_end, mut backup_end) = secure_pair();
    let mut first = ft_log::channel::encode_channel_header();
    first.extend(encode_message(&ToPrimary::Heartbeat));
    backup_end.write_all(&first).unwrap();
    let limits = LinkLimits {
        peer_timeout: Duration::from_millis(200),
        stall_limit: Duration::from_secs(10),
    };
    let started = std::time::Instant::now();
    let link = Link::primary(
        primary_end,
        MessageDecoder::new(),
        Pipe::new(1 << 20),
        quiet_acks(),
        limits,
    )
    .unwrap();
    let why = wait_for_failure(&link, started, "silence");
    assert!(why.contains("no word from the peer for 200ms"), "{why}");
    assert!(
        started.elapsed() > limits.peer_timeout,
        "{:?}",
        started.elapsed()
    );
    link.shutdown();
    drop(backup_end);
}

/// A primary's link to a "backup" that completed the handshake and keeps sending
/// heartbeats, but never reads: the log buffer fills, the sender's write sticks, and after
/// the stall limit (not the peer timeout, which the heartbeats keep at bay) the backup
/// counts as failed; shutting the link down frees the stuck sender.
#[test]
fn a_peer_that_stops_reading_fails_after_the_stall_limit() {
    let (primary_end, mut backup_end) = secure_pair();

    // The backup's side: header, then a heartbeat every 20 ms, and never a read.
    let beating = Arc::new(AtomicBool::new(true));
    let b = beating.clone();
    let heartbeats = std::thread::spawn(move || {
        let mut first = ft_log::channel::encode_channel_header();
        first.extend(encode_message(&ToPrimary::Heartbeat));
        backup_end.write_all(&first).unwrap();
        while b.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            if send(&mut backup_end, &ToPrimary::Heartbeat).is_err() {
                break;
            }
        }
        backup_end
    });

    let pipe = Pipe::new(1 << 20);
    let limits = LinkLimits {
        peer_timeout: Duration::from_millis(500),
        stall_limit: Duration::from_millis(400),
    };
    let acks = quiet_acks();
    let link = Link::primary(
        primary_end,
        MessageDecoder::new(),
        pipe.clone(),
        acks,
        limits,
    )
    .unwrap();
    // The recorder's side: log as fast as the pipe takes it (it blocks when full).
    let mut w = pipe.clone();
    let recorder = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 64 << 10];
        let mut written = 0u64;
        // The socket buffers take some megabytes; then the pipe fills and this blocks,
        // until the pipe is aborted (writes then vanish).
        while written < (1 << 30) && !w.is_finished() {
            w.write_all(&chunk).unwrap();
            written += chunk.len() as u64;
        }
        written
    });
    let t = std::time::Instant::now();
    let why = wait_for_failure(&link, t, "stall");
    assert!(why.contains("stopped reading"), "{why}");
    assert!(t.elapsed() >= limits.stall_limit);
    assert!(pipe.fill() > 0, "the log had to be waiting");
    // What the controller does next: shut the link, abort the pipe (the guest runs on).
    link.shutdown();
    pipe.abort();
    let written = recorder.join().unwrap();
    assert!(written > 0);
    beating.store(false, Ordering::SeqCst);
    drop(heartbeats.join().unwrap());
}
