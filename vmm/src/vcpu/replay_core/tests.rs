//! The replay core driven by a list of entries: no KVM, no files.

use std::collections::VecDeque;

use ft_log::{Delta, Digest, Entry, ExitKind, ExitRecord, PacketOutcome};

use super::*;

/// A log given as a list (what the replayer would have decoded).
pub(super) struct Script {
    entries: VecDeque<Entry>,
    popped: u64,
    live: bool,
}

impl Script {
    pub(super) fn file(entries: impl IntoIterator<Item = Entry>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
            popped: 0,
            live: false,
        }
    }

    fn live(entries: impl IntoIterator<Item = Entry>) -> Self {
        Self {
            live: true,
            ..Self::file(entries)
        }
    }
}

impl LogAhead for Script {
    fn peek(&mut self, i: usize) -> Result<Option<&Entry>, ReplayError> {
        Ok(self.entries.get(i))
    }
    fn pop(&mut self) -> Result<Option<Entry>, ReplayError> {
        let e = self.entries.pop_front();
        self.popped += u64::from(e.is_some());
        Ok(e)
    }
    fn popped(&self) -> u64 {
        self.popped
    }
    fn is_live(&self) -> bool {
        self.live
    }
}

fn pio_in(ordinal: u64, value: u64) -> ExitRecord {
    ExitRecord {
        ordinal,
        time_ns: 1_000 * ordinal,
        kind: ExitKind::PioIn,
        rip: 0x1000,
        addr: 0x3f8,
        size: 1,
        value,
    }
}

fn delta(ordinal: u64, full: bool) -> Delta {
    Delta {
        ordinal,
        time_ns: 9_000,
        full,
        state_encoding: Default::default(),
        vcpu: vec![1, 2, 3],
        devices: vec![4, 5],
        pages: Default::default(),
    }
}

fn shutdown(ordinal: u64) -> Entry {
    Entry::Shutdown {
        ordinal,
        reason: "guest shut down".into(),
        digest: digest(1),
    }
}

fn digest(memory_crc32: u32) -> Digest {
    Digest {
        memory_crc32,
        vcpu_crc32: 2,
        devices_crc32: 3,
    }
}

#[test]
fn a_matching_exit_verifies_and_is_taken_off_the_log() {
    let mut log = Script::file([Entry::Exit(pio_in(1, 0x41)), shutdown(1)]);
    assert_eq!(
        exit_time(&mut log, 1),
        Some(1_000),
        "the clock freezes at its time"
    );
    assert_eq!(exit_time(&mut log, 2), None);
    assert_eq!(
        check_exit(&mut log, &pio_in(1, 0x41)).unwrap(),
        ExitCheck::Verified
    );
    assert_eq!(log.popped, 1);
}

#[test]
fn a_mismatching_exit_is_a_divergence_naming_both_values() {
    let mut log = Script::file([Entry::Exit(pio_in(1, 0x41))]);
    let ExitCheck::Differs(d) = check_exit(&mut log, &pio_in(1, 0x42)).unwrap() else {
        panic!("a different value read must not verify");
    };
    assert_eq!((d.ordinal, d.what), (1, "exit differs"));
    assert!(d.recorded.contains("value 0x41"), "{}", d.recorded);
    assert!(d.replayed.contains("value 0x42"), "{}", d.replayed);
    assert_eq!(log.popped, 1, "the record is consumed either way");

    // Something else than an exit logged at this point.
    let mut log = Script::file([Entry::Interrupt {
        ordinal: 1,
        vector: 0x20,
    }]);
    let ExitCheck::Unexpected(d) = check_exit(&mut log, &pio_in(1, 0x41)).unwrap() else {
        panic!("an interrupt entry is not an exit");
    };
    assert!(d.recorded.contains("Interrupt"), "{}", d.recorded);
    assert!(d.replayed.contains("PioIn"), "{}", d.replayed);
    assert_eq!(log.popped, 0, "left for the recovery to skip");
}

#[test]
fn an_interrupt_entry_is_injected_at_its_exit_only() {
    let mut log = Script::file([Entry::Interrupt {
        ordinal: 5,
        vector: 0x21,
    }]);
    assert_eq!(logged_interrupt(&mut log, 4), None, "not yet");
    assert_eq!(logged_interrupt(&mut log, 5), Some(0x21));
    assert_eq!(logged_interrupt(&mut log, 5), None, "taken once");

    assert_eq!(check_interrupt(5, 0x21, true, || Some(0x21)), Ok(0x21));
    let d = check_interrupt(5, 0x21, true, || Some(0x20)).unwrap_err();
    assert_eq!(
        (d.what, d.recorded.as_str(), d.replayed.as_str()),
        ("interrupt differs", "vector 0x21", "Some(20)")
    );
    let d = check_interrupt(5, 0x21, false, || panic!("the PIC is not asked")).unwrap_err();
    assert_eq!(d.replayed, "guest cannot take it");
}

#[test]
fn console_input_is_fed_at_its_exit() {
    let mut log = Script::file([
        Entry::SerialInput {
            ordinal: 3,
            bytes: b"he".to_vec(),
        },
        Entry::SerialInput {
            ordinal: 3,
            bytes: b"llo".to_vec(),
        },
        Entry::SerialInput {
            ordinal: 4,
            bytes: b"!".to_vec(),
        },
    ]);
    assert!(serial_input(&mut log, 2).is_empty());
    assert_eq!(serial_input(&mut log, 3), b"hello");
    assert_eq!(serial_input(&mut log, 4), b"!");
    assert_eq!(serial_fit(3, 5, 5), None);
    let d = serial_fit(3, 5, 2).unwrap();
    assert_eq!(
        (d.recorded.as_str(), d.replayed.as_str()),
        ("5 bytes", "2 bytes taken")
    );
}

#[test]
fn a_frame_is_offered_at_its_exit_and_checked() {
    let landed = PacketOutcome::Delivered { head: 0, len: 60 };
    let mut log = Script::file([Entry::Packet {
        ordinal: 7,
        data: vec![0xaa; 60],
        outcome: landed,
    }]);
    assert_eq!(logged_frame(&mut log, 6), None);
    assert_eq!(logged_frame(&mut log, 7), Some((vec![0xaa; 60], landed)));
    assert_eq!(check_frame(7, landed, Some(landed)), None);
    let d = check_frame(7, landed, None).unwrap();
    assert_eq!(d.replayed, "no receive buffer");
}

#[test]
fn a_delta_due_here_is_applied_instead_of_running() {
    let mut log = Script::file([
        Entry::Delta(Box::new(delta(8, false))),
        Entry::Exit(pio_in(9, 0)),
    ]);
    assert_eq!(
        before_run(&mut log, 7).unwrap(),
        BeforeRun::Run,
        "not yet due"
    );
    assert_eq!(
        before_run(&mut log, 8).unwrap(),
        BeforeRun::ApplyDelta(Box::new(delta(8, false)))
    );
    assert_eq!(before_run(&mut log, 8).unwrap(), BeforeRun::Run);
}

#[test]
fn the_end_of_the_log() {
    // The final delta and the shutdown record: the recording ended here.
    let mut log = Script::file([Entry::Delta(Box::new(delta(8, true))), shutdown(8)]);
    assert_eq!(before_run(&mut log, 8).unwrap(), BeforeRun::Finished);
    assert_eq!(log.popped, 0, "left for the final digest check");
    let mut log = Script::file([shutdown(8)]);
    assert_eq!(before_run(&mut log, 8).unwrap(), BeforeRun::Finished);

    // A file that just ends is damaged; a primary's live log that ends is where the
    // backup goes live.
    let mut file = Script::file([]);
    assert!(matches!(
        before_run(&mut file, 8),
        Err(ReplayCoreError::NoShutdown)
    ));
    let mut live = Script::live([]);
    assert_eq!(before_run(&mut live, 8).unwrap(), BeforeRun::AwaitLog);
    assert_eq!(halted(&mut live, 8).unwrap(), Halted::AwaitLog);
    assert_eq!(recover_step(&mut live).unwrap(), RecoverStep::GoLive);
}

#[test]
fn a_halted_guest_follows_the_log() {
    let mut log = Script::file([
        Entry::TimeSample {
            ordinal: 2,
            time_ns: 500,
        },
        Entry::Interrupt {
            ordinal: 2,
            vector: 0x20,
        },
        Entry::Exit(pio_in(3, 0)),
    ]);
    assert_eq!(halted(&mut log, 2).unwrap(), Halted::SetTime(500));
    assert_eq!(halted(&mut log, 2).unwrap(), Halted::DeliverLogged);
    let before = log.popped();
    let d = untaken_input(&mut log, 2, before, false).unwrap();
    assert!(d.recorded.contains("Interrupt"), "{}", d.recorded);
    assert_eq!(untaken_input(&mut log, 2, before, true), None, "recovering");
    assert_eq!(logged_interrupt(&mut log, 2), Some(0x20));
    assert_eq!(untaken_input(&mut log, 2, before, false), None, "taken");
    let Halted::Diverged(d) = halted(&mut log, 2).unwrap() else {
        panic!("a halted guest cannot make the logged exit");
    };
    assert_eq!((d.what, d.replayed.as_str()), ("halted here", "halted"));
}

#[test]
fn recovery_skips_to_the_next_delta() {
    let mut log = Script::file([
        Entry::Exit(pio_in(4, 0)),
        Entry::Interrupt {
            ordinal: 4,
            vector: 0x20,
        },
        Entry::Delta(Box::new(delta(6, false))),
        shutdown(6),
    ]);
    assert_eq!(
        recover_step(&mut log).unwrap(),
        RecoverStep::Skipped { exit: true }
    );
    assert_eq!(
        recover_step(&mut log).unwrap(),
        RecoverStep::Skipped { exit: false }
    );
    assert_eq!(
        recover_step(&mut log).unwrap(),
        RecoverStep::Apply {
            delta: Box::new(delta(6, false)),
            is_final: true
        }
    );
    assert!(matches!(
        recover_step(&mut log),
        Err(ReplayCoreError::NoCheckpoint)
    ));

    // A live backup recovers only from a full checkpoint.
    let mut live = Script::live([
        Entry::Delta(Box::new(delta(6, false))),
        Entry::Delta(Box::new(delta(7, true))),
    ]);
    assert_eq!(
        recover_step(&mut live).unwrap(),
        RecoverStep::Skipped { exit: false }
    );
    assert_eq!(
        recover_step(&mut live).unwrap(),
        RecoverStep::Apply {
            delta: Box::new(delta(7, true)),
            is_final: false
        }
    );
}

#[test]
fn the_final_state_is_checked_against_the_recorders_digest() {
    let mut log = Script::file([
        Entry::Exit(pio_in(9, 0)),
        Entry::Delta(Box::new(delta(9, true))),
        shutdown(9),
    ]);
    assert_eq!(
        finish_step(&mut log, false).unwrap(),
        FinishStep::Skipped { exit: true }
    );
    assert_eq!(
        finish_step(&mut log, false).unwrap(),
        FinishStep::Compare {
            delta: Box::new(delta(9, true)),
            recorded: Some(digest(1))
        }
    );
    assert_eq!(
        finish_step(&mut log, false).unwrap(),
        FinishStep::End {
            ordinal: 9,
            digest: digest(1)
        }
    );
    assert!(matches!(
        finish_step(&mut log, false),
        Err(ReplayCoreError::NoShutdown)
    ));
    assert!(check_end(9, 9).is_ok());
    assert_eq!(
        check_end(9, 8).unwrap_err().to_string(),
        "the recording ended at exit 9, the replay at exit 8"
    );

    let same = || panic!("pages are compared only when the digests differ");
    assert_eq!(
        check_final_state(9, Some(digest(1)), Some(digest(1)), same),
        None
    );
    assert_eq!(check_final_state(9, None, Some(digest(1)), same), None);
    let d = check_final_state(9, Some(digest(1)), Some(digest(7)), || (2, 30)).unwrap();
    assert_eq!(d.recorded, digest(1).to_string());
    assert!(
        d.replayed.starts_with(&digest(7).to_string()),
        "{}",
        d.replayed
    );
    assert!(d.replayed.contains("2 pages differ"), "{}", d.replayed);
}

#[test]
fn a_stalled_replay_names_what_the_log_has_next() {
    let mut log = Script::file([Entry::Exit(pio_in(3, 0))]);
    let d = stalled(&mut log, 2, 2_000_000_000);
    assert_eq!(d.replayed, "no exit for 2.0 s");
    assert!(d.recorded.starts_with("next: "), "{}", d.recorded);
    let d = stalled(&mut Script::file([]), 2, 0);
    assert_eq!(d.recorded, "next: end of log");
}

#[test]
fn the_stall_limit_grows_with_the_stretch_the_recorder_ran() {
    let base = 10_000_000_000;
    // The next exit came 30 s of guest time after the last one: allow three times that.
    let mut log = Script::file([Entry::Exit(ExitRecord {
        time_ns: 32_000_000_000,
        ..pio_in(1, 0)
    })]);
    assert_eq!(stall_limit(&mut log, 2_000_000_000, base), 90_000_000_000);
    // A short stretch keeps the base; so does a log with nothing timed next.
    assert_eq!(stall_limit(&mut log, 31_000_000_000, base), base);
    let mut empty = Script::file([]);
    assert_eq!(stall_limit(&mut empty, 0, base), base);
    // A time before now (a damaged log) cannot underflow.
    assert_eq!(stall_limit(&mut log, u64::MAX, base), base);
}
