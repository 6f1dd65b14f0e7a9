//! Attaching a machine's NIC to the host: the transmit port and, under `run` and
//! `record`, the TAP's receive thread and queue. A replayer's NIC is attached to nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::gated::GatedTx;
use crate::ft::frames::FrameGate;

use super::rx::{RxCounters, RxQueue, RxThread, DEFAULT_LIMITS};
use super::tap::Tap;
use super::tx::{DiscardTx, NicSink, TapTx, TxPort};
use super::{format_mac, NetError, NetSpec, DEFAULT_MAC};
use crate::platform::NicSetup;

/// The host side of a NIC on a TAP; receiving stops when it is dropped.
pub struct NetHost {
    /// The queue the receive thread fills and the vCPU takes frames from.
    pub rx: Arc<RxQueue>,
    tx: Arc<TapTx>,
    tap: Tap,
    /// The receive thread; a backup starts it only when it goes live.
    thread: std::sync::Mutex<Option<RxThread>>,
    /// A pair member's transmit port under the output rule.
    pub gated: Option<Arc<GatedTx>>,
}

/// How a pair member attaches its NIC (see [`attach`]).
pub struct PairNic {
    /// The output rule's gate the transmitted frames go through.
    pub gate: FrameGate,
    /// Where the vCPU publishes its exit ordinal (frames are tagged with it).
    pub exit_ordinal: Arc<AtomicU64>,
    /// Receive from the TAP from the start (a primary) or only once live (a backup).
    pub receive_now: bool,
}

/// What the host side of a NIC counted over a run.
#[derive(Debug, Clone, Default)]
pub struct NetCounters {
    /// What the receive path counted.
    pub rx: RxCounters,
    /// Frames written to the TAP.
    pub tx_sent: u64,
    /// Frames dropped because the TAP could not take them (its queue full, or a write error).
    pub tx_dropped: u64,
}

impl std::fmt::Display for NetCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {} frames ({} dropped, queue full; {} offered to the guest), transmitted {} ({} dropped, TAP full)",
            self.rx.received, self.rx.dropped_full, self.rx.offered, self.tx_sent, self.tx_dropped
        )
    }
}

impl NetHost {
    /// Start reading the TAP (a backup going live); once.
    pub fn start_receiving(&self) -> Result<(), NetError> {
        self.receive(true)
    }

    /// Start the receive thread, first dropping what the TAP queued (`drop_stale`) when
    /// it starts late.
    fn receive(&self, drop_stale: bool) -> Result<(), NetError> {
        let mut thread = crate::bus::lock(&self.thread);
        if thread.is_none() && drop_stale {
            // What the TAP queued while nobody read it came before this VMM served the
            // guest: the primary may have had the same frames (a LAN floods frames for
            // an address it has not learned), and the guest must not get them twice.
            // A NIC that was not connected would have dropped them; so are they.
            let mut buf = vec![0u8; 65_536];
            let mut stale = 0u64;
            while stale < 1_000_000 && self.tap.read_frame(&mut buf).is_ok() {
                stale += 1;
            }
            if stale > 0 {
                tracing::info!(
                    tap = self.tap.name(),
                    frames = stale,
                    "stale frames dropped"
                );
            }
        }
        if thread.is_none() {
            let t = RxThread::spawn(self.tap.clone(), self.rx.clone()).map_err(|source| {
                NetError::Thread {
                    tap: self.tap.name().to_owned(),
                    source,
                }
            })?;
            *thread = Some(t);
            tracing::info!(tap = self.tap.name(), "receiving from the TAP");
        }
        Ok(())
    }

    /// What the receive and transmit paths have counted so far.
    pub fn counters(&self) -> NetCounters {
        NetCounters {
            rx: self.rx.counters(),
            tx_sent: self.tx.sent.load(Ordering::Relaxed),
            tx_dropped: self.tx.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Attach a NIC with `mac`: to `tap` when there is one (its frames are read from then on,
/// or, for a backup, from when it goes live), else to nothing (a replayer's). A pair
/// member's frames go through the output rule (`pair`).
pub fn attach(
    mac: [u8; 6],
    tap: Option<Tap>,
    pair: Option<PairNic>,
) -> Result<(NicSetup, Option<NetHost>), NetError> {
    let Some(tap) = tap else {
        let port: Arc<dyn TxPort> = Arc::new(DiscardTx);
        return Ok((
            NicSetup {
                mac,
                sink: NicSink::new(port),
            },
            None,
        ));
    };
    let tx = Arc::new(TapTx::new(tap.clone()));
    let rx = RxQueue::new(DEFAULT_LIMITS);
    let (gated, receive_now) = match pair {
        Some(p) => (
            Some(Arc::new(GatedTx::new(
                p.gate,
                tx.clone(),
                p.exit_ordinal,
                mac,
            ))),
            p.receive_now,
        ),
        None => (None, true),
    };
    let host = NetHost {
        rx,
        tx: tx.clone(),
        tap: tap.clone(),
        thread: std::sync::Mutex::new(None),
        gated: gated.clone(),
    };
    if receive_now {
        host.receive(false)?;
    }
    tracing::info!(tap = tap.name(), mac = %format_mac(&mac), "NIC attached");
    let port: Arc<dyn TxPort> = match gated {
        Some(g) => g,
        None => tx,
    };
    Ok((
        NicSetup {
            mac,
            sink: NicSink::new(port),
        },
        Some(host),
    ))
}

/// The MAC of a freshly booted machine's NIC (none without `--net`).
pub fn boot_mac(spec: Option<&NetSpec>) -> Option<[u8; 6]> {
    spec.map(|s| s.mac.unwrap_or(DEFAULT_MAC))
}

/// The NIC of a machine restored from a snapshot, which says whether it had one
/// (`saved`): `--net` must be given exactly when it had, and keeps its MAC.
pub fn restore_mac(
    spec: Option<&NetSpec>,
    saved: Option<[u8; 6]>,
) -> Result<Option<[u8; 6]>, NetError> {
    match (spec, saved) {
        (None, None) => Ok(None),
        (Some(spec), Some(saved)) => super::restored_mac(spec, saved, "snapshot").map(Some),
        (None, Some(saved)) => Err(NetError::SnapshotNeedsNic {
            mac: format_mac(&saved),
        }),
        (Some(_), None) => Err(NetError::SnapshotHasNoNic),
    }
}

/// The NIC of a replayed machine: the one its log names (`logged`). A `--net` given to
/// the replayer is checked against it (its TAP is never opened).
pub fn replay_mac(
    spec: Option<&NetSpec>,
    logged: Option<[u8; 6]>,
) -> Result<Option<[u8; 6]>, NetError> {
    match (spec, logged) {
        (_, None) if spec.is_some() => Err(NetError::LogHasNoNic),
        (Some(spec), Some(logged)) => super::restored_mac(spec, logged, "log").map(Some),
        (_, logged) => Ok(logged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> NetSpec {
        text.parse().unwrap()
    }

    #[test]
    fn which_nic_a_machine_gets() {
        let m = [0x52, 0x54, 0, 9, 9, 9];
        assert_eq!(boot_mac(None), None);
        assert_eq!(boot_mac(Some(&spec("tap=a"))), Some(DEFAULT_MAC));
        assert_eq!(
            boot_mac(Some(&spec("tap=a,mac=52:54:00:09:09:09"))),
            Some(m)
        );

        assert_eq!(restore_mac(None, None).unwrap(), None);
        assert_eq!(restore_mac(Some(&spec("tap=b")), Some(m)).unwrap(), Some(m));
        assert!(matches!(
            restore_mac(None, Some(m)),
            Err(NetError::SnapshotNeedsNic { .. })
        ));
        assert!(matches!(
            restore_mac(Some(&spec("tap=b")), None),
            Err(NetError::SnapshotHasNoNic)
        ));
        assert!(matches!(
            restore_mac(Some(&spec("tap=b,mac=52:54:00:00:00:01")), Some(m)),
            Err(NetError::MacMismatch { .. })
        ));

        assert_eq!(replay_mac(None, Some(m)).unwrap(), Some(m), "from the log");
        assert_eq!(replay_mac(None, None).unwrap(), None);
        assert_eq!(replay_mac(Some(&spec("tap=x")), Some(m)).unwrap(), Some(m));
        assert!(matches!(
            replay_mac(Some(&spec("tap=x")), None),
            Err(NetError::LogHasNoNic)
        ));
        assert!(matches!(
            replay_mac(Some(&spec("tap=x,mac=52:54:00:00:00:01")), Some(m)),
            Err(NetError::MacMismatch { .. })
        ));
    }
}
