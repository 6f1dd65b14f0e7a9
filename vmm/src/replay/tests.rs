//! The log reader's unit tests: interrupted reads, the logged NIC, held output.

use super::*;

/// A log source that fails with `Interrupted` before every piece it hands out.
struct Interrupting {
    pieces: VecDeque<Vec<u8>>,
    interrupt_next: bool,
}

impl Read for Interrupting {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if std::mem::replace(&mut self.interrupt_next, false) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        self.interrupt_next = true;
        let Some(mut piece) = self.pieces.pop_front() else {
            return Ok(0);
        };
        let n = piece.len().min(out.len());
        out[..n].copy_from_slice(&piece[..n]);
        if n < piece.len() {
            self.pieces.push_front(piece.split_off(n));
        }
        Ok(n)
    }
}

#[test]
fn an_interrupted_read_is_retried() {
    let entries = [
        Entry::Start {
            wall_clock_unix_secs: 7,
        },
        Entry::Interrupt {
            ordinal: 3,
            vector: 0x20,
        },
    ];
    let mut log = ft_log::encode_header();
    for e in &entries {
        log.extend(ft_log::encode_entry(e));
    }
    // In pieces of 5 bytes, each behind an interruption.
    let pieces = log.chunks(5).map(<[u8]>::to_vec).collect();
    let source = Interrupting {
        pieces,
        interrupt_next: true,
    };
    let mut r = Replayer::new(Box::new(source));
    for e in &entries {
        assert_eq!(r.pop().unwrap().as_ref(), Some(e));
    }
    assert_eq!(r.pop().unwrap(), None);
}

#[test]
fn other_read_errors_are_fatal() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::ConnectionReset.into())
        }
    }
    let mut r = Replayer::new(Box::new(Broken));
    assert!(matches!(r.pop(), Err(ReplayError::Read(_))));
}

fn log_of(entries: &[Entry]) -> Vec<u8> {
    let mut bytes = ft_log::encode_header();
    for e in entries {
        bytes.extend(ft_log::encode_entry(e));
    }
    bytes
}

#[test]
fn the_logged_nic_is_read_from_the_start_of_the_log() {
    let start = Entry::Start {
        wall_clock_unix_secs: 1,
    };
    let mac = [0x52, 0x54, 0, 1, 2, 3];
    let with = log_of(&[start.clone(), Entry::Nic { mac }]);
    assert_eq!(logged_nic(&with[..]).unwrap(), Some(mac));
    let without = log_of(&[
        start,
        Entry::TimeSample {
            ordinal: 0,
            time_ns: 5,
        },
    ]);
    assert_eq!(logged_nic(&without[..]).unwrap(), None);
    assert_eq!(logged_nic(&b""[..]).unwrap(), None);
    assert!(logged_nic(&b"not a log at all, not at all"[..]).is_err());
}

/// Held output is taken off the log as it is read: handed to the console while the
/// replay recovers from a divergence, dropped while it is in step (it replays those
/// bytes itself); never an entry the replay core sees.
#[test]
fn held_output_goes_to_the_console_only_while_recovering() {
    let held = |ordinal, position: u64| Entry::HeldOutput {
        ordinal,
        position,
        bytes: b"held".to_vec(),
    };
    let interrupt = |ordinal| Entry::Interrupt {
        ordinal,
        vector: 0x20,
    };
    let log = log_of(&[held(2, 0), interrupt(2), held(5, 4), interrupt(5)]);
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = got.clone();
    let mut r = Replayer::new(Box::new(std::io::Cursor::new(log)));
    r.on_held_output(Box::new(move |ordinal, position, bytes| {
        into.lock()
            .unwrap()
            .push((ordinal, position, bytes.to_vec()))
    }));
    assert_eq!(r.pop().unwrap(), Some(interrupt(2)));
    assert!(got.lock().unwrap().is_empty(), "in step: dropped");
    r.set_recovering(true);
    assert_eq!(r.peek(0).unwrap(), Some(&interrupt(5)));
    assert_eq!(*got.lock().unwrap(), [(5, 4, b"held".to_vec())]);
    assert_eq!(r.pop().unwrap(), Some(interrupt(5)));
    assert_eq!(r.pop().unwrap(), None);
    assert_eq!(r.popped(), 2);
}
