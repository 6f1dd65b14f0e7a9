//! The console sink's unit tests: the output rule, the stream, and the cap on held output
//! (threads and a file, no sockets).

use super::*;

fn temp(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ftvm-console-{tag}-{}", std::process::id()))
}

#[test]
fn held_output_reaches_the_stream_only_when_acked() {
    let path = temp("held");
    let file = File::create(&path).unwrap();
    let sink = ConsoleSink::new(0, Some(file), false);
    let ordinal = Arc::new(AtomicU64::new(4));
    let position = Arc::new(AtomicU64::new(0));
    let mut w = sink.writer(ordinal.clone(), position.clone());
    w.write_all(b"one\n").unwrap(); // exit 5
    position.store(4, Ordering::SeqCst);
    ordinal.store(9, Ordering::SeqCst);
    w.write_all(b"two\n").unwrap(); // exit 10
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    assert_eq!(sink.held_bytes(), 8);
    sink.ack(5);
    assert_eq!(std::fs::read(&path).unwrap(), b"one\n");
    sink.ack(10);
    assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
    assert_eq!(sink.held_bytes(), 0);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn two_writers_of_the_same_stream_leave_each_byte_once() {
    // A primary and the backup that replays it write the same bytes at the same
    // offsets; the backup then goes live and continues the stream.
    let path = temp("two");
    let primary = ConsoleSink::new(0, Some(File::create(&path).unwrap()), false);
    let backup = ConsoleSink::new(
        0,
        Some(std::fs::OpenOptions::new().write(true).open(&path).unwrap()),
        false,
    );
    backup.produce(1, b"0\n1\n", None);
    backup.ack(1);
    primary.produce(1, b"0\n1\n", None);
    primary.produce(2, b"2\n", None);
    primary.ack(1); // the primary dies before exit 2 is acked
    backup.set_alone(true);
    backup.produce(2, b"2\n3\n", None); // live now: its own exit 2
    assert_eq!(std::fs::read(&path).unwrap(), b"0\n1\n2\n3\n");
    assert_eq!(primary.discard(), 2);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_checkpoint_rebases_what_a_diverged_replay_held() {
    let path = temp("rebase");
    let sink = ConsoleSink::new(0, Some(File::create(&path).unwrap()), false);
    sink.produce(1, b"ok\n", Some(0));
    sink.ack(1);
    sink.produce(2, b"diverged\n", Some(3)); // never verified
                                             // A checkpoint says the primary's console is at 6 ("ok\nab" with "ab" released
                                             // by the primary itself): the held bytes go, the stream goes on at 6.
    sink.produce(5, b"c\n", Some(6));
    sink.ack(5);
    let text = std::fs::read(&path).unwrap();
    assert_eq!(&text[..3], b"ok\n");
    assert_eq!(&text[6..], b"c\n");
    assert_eq!(sink.offset(), 8);
    let _ = std::fs::remove_file(&path);
}

/// A primary protected by a backup, holding at most 4 bytes, waiting at most `limit`.
fn capped(limit: Duration) -> Arc<ConsoleSink> {
    let sink = ConsoleSink::with_limits(0, None, false, 4, limit);
    sink.set_alone(false);
    sink
}

/// Write `bytes` at `ordinal` on another thread; the handle says when it is done.
fn write_async(
    sink: &Arc<ConsoleSink>,
    ordinal: u64,
    bytes: &'static [u8],
) -> std::thread::JoinHandle<()> {
    let sink = sink.clone();
    std::thread::spawn(move || sink.produce(ordinal, bytes, None))
}

#[test]
fn output_over_the_cap_waits_for_acks() {
    let sink = capped(Duration::from_secs(30));
    sink.produce(1, b"abc", None);
    let second = write_async(&sink, 2, b"de");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!second.is_finished(), "a write past the cap went through");
    assert_eq!(sink.held_bytes(), 3);
    sink.ack(1);
    second.join().unwrap();
    assert_eq!(sink.held_bytes(), 2);
    assert!(!sink.take_stall());
    assert!(sink.waited() >= Duration::from_millis(90));
    sink.ack(2);
    assert_eq!(sink.stats().bytes_released, 5);
}

#[test]
fn a_wait_past_the_stall_limit_is_reported_and_loses_nothing() {
    let sink = capped(Duration::from_millis(100));
    sink.produce(1, b"abc", None);
    let t = Instant::now();
    sink.produce(2, b"de", None); // no ack comes
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(sink.take_stall());
    assert!(!sink.take_stall(), "a stall is reported once");
    assert_eq!(sink.held_bytes(), 5);
    // The controller takes the backup as lost and, having won, goes on alone.
    sink.stop_waiting();
    sink.produce(3, b"f", None);
    assert_eq!(sink.held_bytes(), 6);
    sink.set_alone(true);
    assert_eq!(sink.held_bytes(), 0);
    assert_eq!(sink.stats().bytes_released, 6);
}

#[test]
fn giving_up_the_peer_frees_a_waiting_write_at_once() {
    let sink = capped(Duration::from_secs(30));
    sink.produce(1, b"abcd", None);
    let second = write_async(&sink, 2, b"e");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!second.is_finished());
    let t = Instant::now();
    sink.stop_waiting();
    second.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!sink.take_stall());
    // A new backup joins: waiting applies again.
    sink.set_alone(true);
    sink.set_alone(false);
    sink.produce(3, b"abcd", None);
    let third = write_async(&sink, 4, b"e");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!third.is_finished());
    sink.set_alone(true);
    third.join().unwrap();
}

#[test]
fn a_backup_never_waits_for_room() {
    // A backup's own replay releases its output: waiting there would wait for itself.
    let sink = ConsoleSink::with_limits(0, None, false, 4, Duration::from_secs(30));
    let t = Instant::now();
    sink.produce(1, b"abcdef", None);
    sink.produce(2, b"ghij", None);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(sink.held_bytes(), 10);
    assert!(!sink.take_stall());
}

#[test]
fn a_diverged_backup_releases_what_its_primary_held_at_the_checkpoint() {
    let path = temp("adopt");
    // The primary: "ok\n" acknowledged, then "ab" and "cd\n" held for the backup.
    let primary = ConsoleSink::new(0, None, false);
    primary.produce(1, b"ok\n", Some(0));
    primary.ack(1);
    primary.produce(2, b"ab", Some(3));
    primary.produce(4, b"cd\n", Some(5));
    let pieces = primary.held_pieces(2);
    assert_eq!(
        pieces,
        [
            (3, b"ab".to_vec()),
            (5, b"cd".to_vec()),
            (7, b"\n".to_vec())
        ]
    );
    // The backup released "ok\n" and holds what its diverged replay wrote instead.
    let backup = ConsoleSink::new(0, Some(File::create(&path).unwrap()), false);
    backup.produce(1, b"ok\n", Some(0));
    backup.ack(1);
    backup.produce(2, b"XY", Some(3));
    for (position, bytes) in &pieces {
        backup.adopt(5, *position, bytes);
    }
    assert_eq!(backup.held_bytes(), 5, "the diverged bytes replaced");
    // Its replay continues at the checkpoint's console position: nothing is rebased.
    backup.produce(6, b"e", Some(8));
    backup.ack(5);
    assert_eq!(std::fs::read(&path).unwrap(), b"ok\nabcd\n");
    backup.ack(6);
    assert_eq!(std::fs::read(&path).unwrap(), b"ok\nabcd\ne");
    assert_eq!(backup.stats().bytes_discarded, 2);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn held_output_that_starts_before_what_was_released_is_not_written_again() {
    let path = temp("adopt-early");
    let backup = ConsoleSink::new(0, Some(File::create(&path).unwrap()), false);
    backup.produce(1, b"ok\n", Some(0));
    backup.ack(1);
    backup.produce(2, b"XY", Some(3));
    // The primary had not had the ack for "ok\n" yet when it took the checkpoint: its
    // held output, in two pieces, starts at 0.
    backup.adopt(3, 0, b"ok");
    backup.adopt(3, 2, b"\nz");
    assert_eq!(
        backup.held_bytes(),
        1,
        "only the byte after what was released"
    );
    backup.ack(3);
    assert_eq!(std::fs::read(&path).unwrap(), b"ok\nz");
    assert_eq!(backup.offset(), 4);
    let stats = backup.stats();
    assert_eq!(stats.bytes_released, 4, "each byte released once");
    assert_eq!(stats.bytes_discarded, 2, "the diverged replay's bytes");
    let _ = std::fs::remove_file(&path);
}
