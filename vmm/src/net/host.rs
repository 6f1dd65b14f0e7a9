//! Attaching a machine's NIC to the host: the transmit port and, under `run` and
//! `record`, the TAP's receive thread and queue. A replayer's NIC is attached to nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::rx::{RxCounters, RxQueue, RxThread, DEFAULT_LIMITS};
use super::tap::Tap;
use super::tx::{DiscardTx, NicSink, TapTx, TxPort};
use super::{format_mac, NetError, NetSpec, DEFAULT_MAC};
use crate::platform::NicSetup;

/// The host side of a NIC on a TAP; receiving stops when it is dropped.
pub struct NetHost {
    pub rx: Arc<RxQueue>,
    tx: Arc<TapTx>,
    _thread: RxThread,
}

/// What the host side of a NIC counted over a run.
#[derive(Debug, Clone, Default)]
pub struct NetCounters {
    pub rx: RxCounters,
    pub tx_sent: u64,
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
    pub fn counters(&self) -> NetCounters {
        NetCounters {
            rx: self.rx.counters(),
            tx_sent: self.tx.sent.load(Ordering::Relaxed),
            tx_dropped: self.tx.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Attach a NIC with `mac`: to `tap` when there is one (its frames are read from then on),
/// else to nothing (a replayer's).
pub fn attach(mac: [u8; 6], tap: Option<Tap>) -> Result<(NicSetup, Option<NetHost>), NetError> {
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
    let thread = RxThread::spawn(tap.clone(), rx.clone()).map_err(|source| NetError::Thread {
        tap: tap.name().to_owned(),
        source,
    })?;
    tracing::info!(tap = tap.name(), mac = %format_mac(&mac), "NIC attached");
    let port: Arc<dyn TxPort> = tx.clone();
    Ok((
        NicSetup {
            mac,
            sink: NicSink::new(port),
        },
        Some(NetHost {
            rx,
            tx,
            _thread: thread,
        }),
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
