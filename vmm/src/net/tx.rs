//! Transmitted frames: the device hands each to a [`NicSink`], which keeps a running CRC32
//! of what the guest sent (part of the NIC's saved state, so the final digest covers the
//! transmitted bytes and a replay that sent other frames ends with another digest) and
//! passes the frame to its [`TxPort`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use ftvm_devices::virtio::FrameSink;

use super::tap::Tap;

/// Where transmitted frames go. Called on the vCPU thread at the exit of the guest's
/// notify: must never block.
pub trait TxPort: Send + Sync {
    /// Send one Ethernet frame, or drop it; never blocks.
    fn transmit(&self, frame: &[u8]);
}

/// Frames written to a TAP at once; a TAP whose queue is full drops (and counts) the
/// frame, as a full NIC ring would.
pub struct TapTx {
    tap: Tap,
    /// Frames written to the TAP.
    pub sent: AtomicU64,
    /// Frames dropped: the TAP's queue was full or the write failed.
    pub dropped: AtomicU64,
}

impl TapTx {
    /// A port writing to `tap`, with zeroed counters.
    pub fn new(tap: Tap) -> Self {
        Self {
            tap,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl TxPort for TapTx {
    fn transmit(&self, frame: &[u8]) {
        match self.tap.write_frame(frame) {
            Ok(_) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                if e.kind() != std::io::ErrorKind::WouldBlock && before == 0 {
                    tracing::warn!(tap = self.tap.name(), "cannot write to the TAP: {e}");
                }
            }
        }
    }
}

/// A replayer's port: the frames were sent when the log was recorded.
pub struct DiscardTx;

impl TxPort for DiscardTx {
    fn transmit(&self, _: &[u8]) {}
}

/// The device's sink: counts into the running CRC, then the port. Clones share both (a
/// device rebuilt from a state keeps sending to the same place).
#[derive(Clone)]
pub struct NicSink {
    port: Arc<dyn TxPort>,
    crc: Arc<AtomicU32>,
}

impl NicSink {
    /// A sink passing frames to `port`, its CRC starting at 0.
    pub fn new(port: Arc<dyn TxPort>) -> Self {
        Self {
            port,
            crc: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The running CRC32 of the frames sent so far.
    pub fn tx_crc(&self) -> u32 {
        self.crc.load(Ordering::SeqCst)
    }

    /// Set the running CRC (a NIC restored from its saved state).
    pub fn set_tx_crc(&self, crc: u32) {
        self.crc.store(crc, Ordering::SeqCst);
    }
}

impl FrameSink for NicSink {
    fn send(&mut self, frame: &[u8]) {
        let mut h = crc32fast::Hasher::new_with_initial(self.tx_crc());
        h.update(&(frame.len() as u64).to_le_bytes());
        h.update(frame);
        self.set_tx_crc(h.finalize());
        self.port.transmit(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Vec<u8>>>);
    impl TxPort for Collect {
        fn transmit(&self, frame: &[u8]) {
            self.0.lock().unwrap().push(frame.to_vec());
        }
    }

    #[test]
    fn the_crc_covers_every_frame_and_clones_share_it() {
        let port = Arc::new(Collect::default());
        let mut a = NicSink::new(port.clone());
        let mut b = a.clone();
        a.send(b"one");
        let after_one = a.tx_crc();
        assert_ne!(after_one, 0);
        b.send(b"two");
        assert_ne!(a.tx_crc(), after_one, "b shares a's CRC");
        assert_eq!(port.0.lock().unwrap().len(), 2);
        // Frame boundaries count: "on" + "etwo" is not "one" + "two".
        let mut c = NicSink::new(Arc::new(DiscardTx));
        c.send(b"on");
        c.send(b"etwo");
        assert_ne!(c.tx_crc(), a.tx_crc());
    }
}
