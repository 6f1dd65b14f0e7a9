//! A pair member's transmit port: the guest's frames go through the output rule
//! ([`crate::ft::frames::FrameGate`]) before they reach the TAP. The controller tells it
//! what the role core decides (acks, protected or alone, gone live, lost); frames leave in
//! the order the guest sent them, under the gate's lock (TAP writes never block).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::tx::{TapTx, TxPort};
use crate::bus::lock;
use crate::ft::announce::rarp_announcement;
use crate::ft::frames::{FrameCounts, FrameGate};

/// A pair member's transmit port: the guest's frames are held by the output rule's gate
/// and written to the TAP once it releases them.
pub struct GatedTx {
    gate: Mutex<FrameGate>,
    tap: Arc<TapTx>,
    /// The vCPU's last exit: a frame belongs to the exit in progress, the next one.
    exit_ordinal: Arc<AtomicU64>,
    mac: [u8; 6],
    /// The clock of the frames' hold times.
    started: Instant,
}

impl GatedTx {
    /// A port sending `gate`'s released frames to `tap`, tagging each with the exit in
    /// progress (one past `exit_ordinal`); `mac` is the NIC's, announced when a backup goes live.
    pub fn new(
        gate: FrameGate,
        tap: Arc<TapTx>,
        exit_ordinal: Arc<AtomicU64>,
        mac: [u8; 6],
    ) -> Self {
        Self {
            gate: Mutex::new(gate),
            tap,
            exit_ordinal,
            mac,
            started: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn send(&self, frames: Vec<Vec<u8>>) {
        for f in frames {
            self.tap.transmit(&f);
        }
    }

    /// The backup verified through `ordinal` (a backup's own verification releases none).
    pub fn ack(&self, ordinal: u64) {
        let mut g = lock(&self.gate);
        let out = g.ack(ordinal, self.now_ns());
        self.send(out);
    }

    /// A backup joined: frames wait for it.
    pub fn protect(&self) {
        lock(&self.gate).protect();
    }

    /// The backup is gone: what is held leaves, and later frames at once.
    pub fn alone(&self) {
        let mut g = lock(&self.gate);
        let out = g.alone(self.now_ns());
        self.send(out);
    }

    /// This backup went live at exit `ordinal`: tell the LAN where the guest is now, then
    /// send the frames its own run produced.
    pub fn go_live(&self, ordinal: u64) {
        let mut g = lock(&self.gate);
        self.tap.transmit(&rarp_announcement(self.mac));
        let out = g.go_live(ordinal);
        self.send(out);
    }

    /// This VMM lost: nothing more leaves, ever.
    pub fn die(&self) -> u64 {
        lock(&self.gate).die()
    }

    /// The gate's frame counts so far, with the bytes it holds now.
    pub fn counts(&self) -> FrameCounts {
        let gate = lock(&self.gate);
        FrameCounts {
            held_bytes: gate.held_bytes(),
            ..gate.counts.clone()
        }
    }
}

impl TxPort for GatedTx {
    fn transmit(&self, frame: &[u8]) {
        let ordinal = self.exit_ordinal.load(Ordering::SeqCst).saturating_add(1);
        let mut g = lock(&self.gate);
        let out = g.produce(ordinal, frame, self.now_ns());
        self.send(out);
    }
}
