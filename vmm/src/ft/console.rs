//! The guest's console under the output rule.
//!
//! Every byte the guest writes is tagged with the exit that wrote it and held in an
//! [`OutputGate`] until the backup has replayed and verified that exit (on a backup: until
//! it has verified it itself). Released bytes go to the console stream in the shared
//! directory, written at their offset in the guest's console output, so that whichever VMM
//! writes a byte (the primary, or the backup that replayed it and later went live) the
//! observer of the stream sees it exactly once, in order. A VMM's stdout shows what it
//! released while it was the one serving (a primary, or a backup once live).
//!
//! Held output is capped (`--output-cap`). When a primary's backup lags so far that the
//! next write would exceed the cap, the guest's output path waits for acknowledgements -
//! the guest sees a slow console, as on a real serial line, and loses nothing - for at most
//! the stall limit (`--stall-limit`). A write still waiting then is taken anyway and the
//! wait is reported ([`ConsoleSink::take_stall`]): the controller counts the backup as
//! lost and goes on alone, which releases everything held. A backup never waits (its own
//! replay is what releases its output).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ft_log::output::{OutputGate, OutputStats, Released, DEFAULT_HELD_CAP};

/// How long a write may wait for room by default.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(5);

/// Where the guest's console output goes under the output rule: held until verified, then
/// written to the console stream (and stdout while this VMM serves it).
pub struct ConsoleSink {
    gate: Mutex<OutputGate>,
    /// Signalled whenever held output leaves (acks, going alone, discards, rebases).
    room: Condvar,
    /// A write waits for room only while a primary holds output for a backup.
    waits_for_peer: AtomicBool,
    stall_limit: Duration,
    /// A write waited the whole stall limit (taken by [`ConsoleSink::take_stall`]).
    stalled: AtomicBool,
    /// Nanoseconds writes have spent waiting for room, in all.
    waited_ns: AtomicU64,
    file: Option<File>,
    /// Bytes at or after this console offset are also written to stdout (u64::MAX: none).
    stdout_from: AtomicU64,
    started: Instant,
    /// A write to the console stream failed (reported once).
    file_failed: AtomicBool,
    /// The guest's console position (the platform's count) where this stream began: a
    /// pair started from a snapshot starts its stream empty.
    base: AtomicU64,
    /// The guest's network frames, under the same rule: acks, going alone and losing
    /// apply to them as to console bytes (see [`crate::ft::frames`]).
    frames: std::sync::OnceLock<Arc<crate::net::gated::GatedTx>>,
}

impl ConsoleSink {
    /// A sink whose console stream continues at `offset`; `stdout` says whether this VMM
    /// serves the console on stdout from the start (a primary does, a backup does not).
    pub fn new(offset: u64, file: Option<File>, stdout: bool) -> Arc<Self> {
        Self::with_limits(offset, file, stdout, DEFAULT_HELD_CAP, DEFAULT_STALL_LIMIT)
    }

    /// [`ConsoleSink::new`] holding at most `cap` bytes, a write waiting for room at most
    /// `stall_limit`.
    pub fn with_limits(
        offset: u64,
        file: Option<File>,
        stdout: bool,
        cap: u64,
        stall_limit: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            gate: Mutex::new(OutputGate::new(offset).with_cap(cap)),
            room: Condvar::new(),
            waits_for_peer: AtomicBool::new(false),
            stall_limit,
            stalled: AtomicBool::new(false),
            waited_ns: AtomicU64::new(0),
            file,
            stdout_from: AtomicU64::new(if stdout { 0 } else { u64::MAX }),
            started: Instant::now(),
            file_failed: AtomicBool::new(false),
            base: AtomicU64::new(0),
            frames: std::sync::OnceLock::new(),
        })
    }

    /// The stream began at the guest's console position `base`.
    pub fn set_base(&self, base: u64) {
        self.base.store(base, Ordering::SeqCst);
    }

    /// The guest's console position where this stream began.
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
        // The delay counts from the guest's write, time spent waiting for room included.
        let mut gate = self.wait_for_room(gate, bytes.len() as u64);
        if let Some(r) = gate.hold(ordinal, bytes, now) {
            self.emit(std::slice::from_ref(&r));
        }
    }

    /// What this VMM holds, in pieces of at most `piece` bytes: (the guest's console
    /// position of the first byte, the bytes). A primary logs it before the full
    /// checkpoint a diverged backup asked for (see [`ConsoleSink::adopt`]).
    pub fn held_pieces(&self, piece: usize) -> Vec<(u64, Vec<u8>)> {
        let gate = self.gate();
        let mut position = gate.released_offset().saturating_add(self.base());
        let held = gate.held();
        drop(gate);
        held.chunks(piece.max(1))
            .map(|bytes| {
                let at = position;
                position = position.saturating_add(bytes.len() as u64);
                (at, bytes.to_vec())
            })
            .collect()
    }

    /// A backup is given what its primary held at checkpoint `ordinal` (bytes from the
    /// guest's console position `position` on), which its own diverged replay never
    /// produced: it holds them in place of what that replay held, so that its own ack of
    /// the checkpoint releases them, as the primary's does. Pieces follow each other; a
    /// piece that starts elsewhere than where the last one ended replaces what is held.
    /// Bytes before what this backup already released (verified before it diverged: the
    /// primary had not had that ack yet) are the same bytes and are not written again.
    pub fn adopt(&self, ordinal: u64, position: u64, bytes: &[u8]) {
        let now = self.now_ns();
        let mut gate = self.gate();
        let offset = position.saturating_sub(self.base());
        let released = gate.released_offset();
        let (offset, bytes) = if offset < released {
            let skip = usize::try_from(released - offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            (released, &bytes[skip..])
        } else {
            (offset, bytes)
        };
        if offset != gate.offset() {
            let dropped = gate.rebase(offset);
            tracing::info!(
                offset,
                dropped,
                "console stream rebased on the primary's held output"
            );
        }
        if let Some(r) = gate.hold(ordinal, bytes, now) {
            self.emit(std::slice::from_ref(&r));
        }
        self.room.notify_all();
    }

    /// Wait (the gate unlocked meanwhile) until `len` more bytes fit under the cap, the
    /// sink stops waiting for a peer, or the stall limit passes (reported as a stall).
    fn wait_for_room<'a>(
        &'a self,
        mut gate: MutexGuard<'a, OutputGate>,
        len: u64,
    ) -> MutexGuard<'a, OutputGate> {
        if gate.has_room(len) || !self.waits_for_peer.load(Ordering::SeqCst) {
            return gate;
        }
        let started = Instant::now();
        let deadline = started + self.stall_limit;
        tracing::debug!(
            held = gate.held_bytes(),
            len,
            "output at its cap: waiting for the backup"
        );
        while !gate.has_room(len) && self.waits_for_peer.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    "held output at its cap ({} bytes) for {:?}: the backup counts as lost",
                    gate.cap(),
                    self.stall_limit
                );
                self.stalled.store(true, Ordering::SeqCst);
                break;
            }
            gate = self
                .room
                .wait_timeout(gate, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited_ns.fetch_add(waited, Ordering::Relaxed);
        gate
    }

    /// Whether a write waited for room past the stall limit since the last call.
    pub fn take_stall(&self) -> bool {
        self.stalled.swap(false, Ordering::SeqCst)
    }

    /// The peer is being given up: writes stop waiting for room (what is held stays held
    /// until it is released or discarded).
    pub fn stop_waiting(&self) {
        self.waits_for_peer.store(false, Ordering::SeqCst);
        let _gate = self.gate();
        self.room.notify_all();
    }

    /// Time writes have spent waiting for room.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// Most bytes held before a write waits for room (`--output-cap`).
    pub fn cap(&self) -> u64 {
        self.gate().cap()
    }

    /// What the frame gate did so far (zeros when the guest has no NIC).
    pub fn frame_counts(&self) -> crate::ft::frames::FrameCounts {
        self.frames.get().map(|f| f.counts()).unwrap_or_default()
    }

    /// Put the guest's network frames under the same rule as its console.
    pub fn attach_frames(&self, frames: Arc<crate::net::gated::GatedTx>) {
        let _ = self.frames.set(frames);
    }

    /// The peer (or, on a backup, this VMM's own replay) verified through `ordinal`.
    pub fn ack(&self, ordinal: u64) {
        if let Some(f) = self.frames.get() {
            f.ack(ordinal);
        }
        let now = self.now_ns();
        let mut gate = self.gate();
        let released = gate.ack(ordinal, now);
        if !released.is_empty() {
            self.emit(&released);
            self.room.notify_all();
        }
    }

    /// Alone (no peer to wait for) or protected again (a backup joined this primary:
    /// writes wait for room again).
    pub fn set_alone(&self, alone: bool) {
        if let Some(f) = self.frames.get() {
            if alone {
                f.alone();
            } else {
                f.protect();
            }
        }
        let now = self.now_ns();
        let mut gate = self.gate();
        let released = gate.set_alone(alone, now);
        self.waits_for_peer.store(!alone, Ordering::SeqCst);
        if !alone {
            self.stalled.store(false, Ordering::SeqCst);
        }
        if !released.is_empty() {
            self.emit(&released);
        }
        self.room.notify_all();
    }

    /// This VMM lost the test-and-set: what it holds must never appear.
    pub fn discard(&self) -> u64 {
        if let Some(f) = self.frames.get() {
            f.die();
        }
        let n = self.gate().discard();
        self.room.notify_all();
        n
    }

    /// A backup going live serves the console on its stdout from here on.
    pub fn serve_stdout_from_here(&self) {
        let gate = self.gate();
        self.stdout_from.store(gate.offset(), Ordering::SeqCst);
    }

    /// Console stream offset after everything produced so far (held or released).
    pub fn offset(&self) -> u64 {
        self.gate().offset()
    }

    /// Bytes held now, waiting for an acknowledgement.
    pub fn held_bytes(&self) -> u64 {
        self.gate().held_bytes()
    }

    /// What the output gate has done so far.
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

/// The serial device's writer into a [`ConsoleSink`] (made by [`ConsoleSink::writer`]).
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
mod tests;
