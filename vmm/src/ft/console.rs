//! The guest's console under the output rule.
//!
//! Every byte the guest writes is tagged with the exit that wrote it and held in an
//! [`OutputGate`] until the backup has replayed and verified that exit (on a backup: until
//! it has verified it itself). Released bytes go to the console stream in the shared
//! directory, written at their offset in the guest's console output, so that whichever VMM
//! writes a byte (the primary, or the backup that replayed it and later went live) the
//! observer of the stream sees it exactly once, in order. A VMM's stdout shows what it
//! released while it was the one serving (a primary, or a backup once live).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ft_log::output::{OutputGate, OutputStats, Released};

pub struct ConsoleSink {
    gate: Mutex<OutputGate>,
    file: Option<File>,
    /// Bytes at or after this console offset are also written to stdout (u64::MAX: none).
    stdout_from: AtomicU64,
    started: Instant,
    /// A write to the console stream failed (reported once).
    file_failed: AtomicBool,
    /// The guest's console position (the platform's count) where this stream began: a
    /// pair started from a snapshot starts its stream empty.
    base: AtomicU64,
}

impl ConsoleSink {
    /// A sink whose console stream continues at `offset`; `stdout` says whether this VMM
    /// serves the console on stdout from the start (a primary does, a backup does not).
    pub fn new(offset: u64, file: Option<File>, stdout: bool) -> Arc<Self> {
        Arc::new(Self {
            gate: Mutex::new(OutputGate::new(offset)),
            file,
            stdout_from: AtomicU64::new(if stdout { 0 } else { u64::MAX }),
            started: Instant::now(),
            file_failed: AtomicBool::new(false),
            base: AtomicU64::new(0),
        })
    }

    /// The stream began at the guest's console position `base`.
    pub fn set_base(&self, base: u64) {
        self.base.store(base, Ordering::SeqCst);
    }

    pub fn base(&self) -> u64 {
        self.base.load(Ordering::SeqCst)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn gate(&self) -> MutexGuard<'_, OutputGate> {
        crate::bus::lock(&self.gate)
    }

    /// Write released bytes out (called with the gate locked, so releases stay in order).
    fn emit(&self, released: &[Released]) {
        let from = self.stdout_from.load(Ordering::SeqCst);
        let mut out = std::io::stdout().lock();
        for r in released {
            if let Some(f) = &self.file {
                if let Err(e) = f.write_all_at(&r.bytes, r.offset) {
                    if !self.file_failed.swap(true, Ordering::SeqCst) {
                        tracing::error!("cannot write the console stream: {e}");
                    }
                }
            }
            let end = r.offset.saturating_add(r.bytes.len() as u64);
            if end > from {
                let skip = from.saturating_sub(r.offset) as usize;
                // A reader that went away must not stop the guest.
                let _ = out.write_all(&r.bytes[skip..]);
            }
        }
        let _ = out.flush();
    }

    /// The guest wrote `bytes` at exit `ordinal`, at `position` in its console stream
    /// (None: right after what it wrote before).
    pub fn produce(&self, ordinal: u64, bytes: &[u8], position: Option<u64>) {
        let now = self.now_ns();
        let mut gate = self.gate();
        let position = position.map(|p| p.saturating_sub(self.base()));
        if let Some(p) = position.filter(|&p| p != gate.offset()) {
            // Only after a checkpoint put a diverged replay back in step.
            let dropped = gate.rebase(p);
            tracing::info!(
                position = p,
                dropped,
                "console stream rebased on a checkpoint"
            );
        }
        if let Some(r) = gate.hold(ordinal, bytes, now) {
            self.emit(std::slice::from_ref(&r));
        }
    }

    /// The peer (or, on a backup, this VMM's own replay) verified through `ordinal`.
    pub fn ack(&self, ordinal: u64) {
        let now = self.now_ns();
        let mut gate = self.gate();
        let released = gate.ack(ordinal, now);
        if !released.is_empty() {
            self.emit(&released);
        }
    }

    /// Alone (no peer to wait for) or protected again.
    pub fn set_alone(&self, alone: bool) {
        let now = self.now_ns();
        let mut gate = self.gate();
        let released = gate.set_alone(alone, now);
        if !released.is_empty() {
            self.emit(&released);
        }
    }

    /// This VMM lost the test-and-set: what it holds must never appear.
    pub fn discard(&self) -> u64 {
        self.gate().discard()
    }

    /// A backup going live serves the console on its stdout from here on.
    pub fn serve_stdout_from_here(&self) {
        let gate = self.gate();
        self.stdout_from.store(gate.offset(), Ordering::SeqCst);
    }

    pub fn offset(&self) -> u64 {
        self.gate().offset()
    }

    pub fn held_bytes(&self) -> u64 {
        self.gate().held_bytes()
    }

    pub fn stats(&self) -> OutputStats {
        self.gate().stats().clone()
    }

    /// The serial device's writer: tags each write with the exit producing it and its
    /// position in the console stream (the platform's count, which checkpoints carry).
    pub fn writer(
        self: &Arc<Self>,
        exit_ordinal: Arc<AtomicU64>,
        position: Arc<AtomicU64>,
    ) -> GatedConsole {
        GatedConsole {
            sink: self.clone(),
            exit_ordinal,
            position,
        }
    }
}

pub struct GatedConsole {
    sink: Arc<ConsoleSink>,
    /// The vCPU's last completed exit; the write belongs to the one being handled.
    exit_ordinal: Arc<AtomicU64>,
    /// Bytes the guest wrote before this write (the platform counts them after it).
    position: Arc<AtomicU64>,
}

impl Write for GatedConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let ordinal = self.exit_ordinal.load(Ordering::SeqCst) + 1;
        let position = self.position.load(Ordering::SeqCst);
        self.sink.produce(ordinal, buf, Some(position));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
