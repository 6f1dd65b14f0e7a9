//! The guest's network card: `--net tap=NAME[,mac=MAC]`, a virtio-net function backed by a
//! host TAP device.
//!
//! - [`tap`] opens the TAP (it must exist; ftvm never creates one).
//! - [`rx`]: an I/O thread reads frames from the TAP into a bounded queue; the vCPU takes
//!   them off it only at synchronous exits (logged as inputs), never the thread.
//! - [`tx`]: frames the guest transmits go to a [`tx::TxPort`]: the TAP under `run` and
//!   `record` (non-blocking, a full TAP drops), nothing under `replay`. The port is an
//!   object so that a primary can hold frames back under the output rule.
//! - [`host`]: which NIC (MAC) a machine gets when it boots, is restored or is replayed,
//!   and its host side (the receive thread and queue, the transmit port).

use std::str::FromStr;

pub mod gated;
pub mod host;
pub mod rx;
pub mod tap;
pub mod tx;

/// The MAC a NIC gets unless `mac=` says otherwise: fixed, so that a guest's network
/// configuration (and its log) is the same on every run. Locally administered (0x52).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Why a NIC could not be set up: a bad `--net`, one that does not fit the saved machine,
/// or a TAP that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A `--net` argument that does not parse.
    #[error("bad --net '{spec}': {reason} (expected tap=NAME[,mac=52:54:00:12:34:56])")]
    BadSpec {
        /// The argument as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The snapshot's machine has a NIC but no `--net` was given.
    #[error(
        "the snapshot's machine has a network card (MAC {mac}); give it a TAP with --net tap=NAME"
    )]
    SnapshotNeedsNic {
        /// The MAC of the snapshot's NIC.
        mac: String,
    },
    /// `--net` was given to restore a snapshot whose machine has no NIC.
    #[error("the snapshot's machine has no network card, but --net was given")]
    SnapshotHasNoNic,
    /// A `mac=` differs from the MAC saved in the snapshot or log.
    #[error("--net mac={given} differs from the MAC the {what} was made with ({saved})")]
    MacMismatch {
        /// The MAC given on the command line.
        given: String,
        /// The MAC the snapshot or log was made with.
        saved: String,
        /// What holds the saved MAC: "snapshot" or "log".
        what: &'static str,
    },
    /// `--net` was given to replay a log whose machine has no NIC.
    #[error("the log's machine has no network card, but --net was given")]
    LogHasNoNic,
    /// The TAP's receive thread could not be spawned.
    #[error("cannot start the receive thread of TAP {tap}")]
    Thread {
        /// The TAP's name.
        tap: String,
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },
    /// The TAP could not be opened or attached to.
    #[error(transparent)]
    Tap(#[from] tap::TapError),
}

/// One `--net` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Name of the host TAP device (`tap=`).
    pub tap: String,
    /// `None`: the default MAC on a fresh boot, the saved one on a restore.
    pub mac: Option<[u8; 6]>,
}

impl FromStr for NetSpec {
    type Err = NetError;
    fn from_str(spec: &str) -> Result<Self, NetError> {
        let bad = |reason: &str| NetError::BadSpec {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let mut tap = None;
        let mut mac = None;
        for option in spec.split(',') {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| bad(&format!("'{option}' is not KEY=VALUE")))?;
            match key {
                "tap" if tap.is_some() => return Err(bad("tap is given twice")),
                "tap" => {
                    tap::check_name(value).map_err(|e| bad(&e.to_string()))?;
                    tap = Some(value.to_owned());
                }
                "mac" if mac.is_some() => return Err(bad("mac is given twice")),
                "mac" => mac = Some(parse_mac(value).map_err(|r| bad(&r))?),
                _ => return Err(bad(&format!("unknown option '{key}'"))),
            }
        }
        Ok(Self {
            tap: tap.ok_or_else(|| bad("tap=NAME is missing"))?,
            mac,
        })
    }
}

/// Six hex bytes separated by ':' (or '-'), a unicast address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!(
            "MAC '{text}' is not six bytes like 52:54:00:12:34:56"
        ));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(format!("MAC '{text}': '{part}' is not two hex digits"));
        }
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| format!("MAC '{text}': '{part}' is not two hex digits"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC '{text}' is a multicast address"));
    }
    if mac == [0; 6] {
        return Err(format!("MAC '{text}' is all zeros"));
    }
    Ok(mac)
}

/// A MAC as six lower-case hex bytes separated by ':'.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The MAC a NIC restored from a saved machine gets: the saved one; a `mac=` given on the
/// command line must be the same.
pub fn restored_mac(
    spec: &NetSpec,
    saved: [u8; 6],
    what: &'static str,
) -> Result<[u8; 6], NetError> {
    match spec.mac {
        Some(given) if given != saved => Err(NetError::MacMismatch {
            given: format_mac(&given),
            saved: format_mac(&saved),
            what,
        }),
        _ => Ok(saved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s: NetSpec = "tap=ftvm0".parse().unwrap();
        assert_eq!(s.tap, "ftvm0");
        assert_eq!(s.mac, None);
        let s: NetSpec = "mac=52:54:00:aa:bb:0c,tap=t".parse().unwrap();
        assert_eq!(s.mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0x0c]));
        assert_eq!(format_mac(&s.mac.unwrap()), "52:54:00:aa:bb:0c");
        for (bad, why) in [
            ("", "not KEY=VALUE"),
            ("ftvm0", "not KEY=VALUE"),
            ("tap=", "empty"),
            ("tap=a,tap=b", "twice"),
            ("tap=a,mac=1", "six bytes"),
            ("tap=a,mac=01:00:00:00:00:01", "multicast"),
            ("tap=a,mac=00:00:00:00:00:00", "all zeros"),
            ("tap=a,mac=52:54:00:12:34:5g", "hex"),
            ("tap=a,mac=52:54:00:12:34:567", "hex"),
            ("tap=a,speed=10", "unknown option"),
            ("mac=52:54:00:12:34:56", "tap=NAME is missing"),
            ("tap=a/b", "'/'"),
            ("tap=averyveryverylongname", "15 bytes"),
        ] {
            let e = bad.parse::<NetSpec>().unwrap_err().to_string();
            assert!(e.starts_with("bad --net") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_restore_keeps_the_saved_mac() {
        let saved = [0x52, 0x54, 0, 1, 2, 3];
        let spec: NetSpec = "tap=t".parse().unwrap();
        assert_eq!(restored_mac(&spec, saved, "snapshot").unwrap(), saved);
        let spec: NetSpec = "tap=t,mac=52:54:00:01:02:03".parse().unwrap();
        assert_eq!(restored_mac(&spec, saved, "snapshot").unwrap(), saved);
        let spec: NetSpec = "tap=t,mac=52:54:00:01:02:04".parse().unwrap();
        let e = restored_mac(&spec, saved, "snapshot")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("52:54:00:01:02:04") && e.contains("52:54:00:01:02:03"),
            "{e}"
        );
    }
}
