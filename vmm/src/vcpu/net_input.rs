//! Received frames at the vCPU's stopping points: taken off the TAP's queue and logged
//! (record), taken off the log and checked (replay), or just taken (run).
//!
//! A frame is written into guest memory only here, with the vCPU stopped at a synchronous
//! exit (or at a kick, after the recorder's checkpoint delta), so the log can name the
//! point. Each offer the device acts on is one `Packet` entry: the frame's bytes and the
//! outcome (chain head and length, too large, or queue broken), which the replayer
//! reproduces and checks. An offer the device has no buffer for changes nothing in the
//! guest and is not logged: the frame stays queued and is offered again at the next point.

use ft_log::{Entry, PacketOutcome};
use ftvm_devices::virtio::{Delivery, VirtioError};

use super::logged::LogMode;
use super::replay_core;
use super::Vcpu;

/// What the log says of a device's answer to one frame (None: it had no buffer, nothing
/// happened in the guest).
pub(super) fn outcome_of(result: Result<Delivery, VirtioError>) -> Option<PacketOutcome> {
    match result {
        Ok(Delivery::Delivered { head, len }) => Some(PacketOutcome::Delivered { head, len }),
        Ok(Delivery::TooLarge { head }) => Some(PacketOutcome::TooLarge { head }),
        Ok(Delivery::NoBuffer) => None,
        Err(_) => Some(PacketOutcome::Broken),
    }
}

/// A replayed offer against its record: None when they agree, else both sides' words.
pub(super) fn replay_mismatch(
    recorded: PacketOutcome,
    replayed: Option<PacketOutcome>,
) -> Option<(String, String)> {
    match replayed {
        Some(mine) if mine == recorded => None,
        Some(mine) => Some((recorded.to_string(), mine.to_string())),
        None => Some((recorded.to_string(), "no receive buffer".to_string())),
    }
}

impl Vcpu {
    /// Received frames for this point.
    pub(super) fn deliver_frames(&mut self) {
        if matches!(self.log, LogMode::Replay(_)) {
            self.replay_frames();
            return;
        }
        let Some(rx) = self.net_rx.clone() else {
            return;
        };
        loop {
            let Some(frame) = rx.core().take() else {
                break;
            };
            let Some(result) = self.platform.deliver_frame(&frame) else {
                // A queue without a NIC cannot be built; drop rather than spin.
                rx.core().offered();
                continue;
            };
            let Some(outcome) = outcome_of(result) else {
                rx.core().no_buffer(frame);
                break;
            };
            rx.core().offered();
            if let LogMode::Record(rec) = &mut self.log {
                let entry = Entry::Packet {
                    ordinal: self.ordinal,
                    data: frame,
                    outcome,
                };
                if let Err(e) = rec.log(&entry) {
                    self.log_failure = Some(super::logged::log_failed(e));
                    return;
                }
            }
        }
    }

    /// Replay: offer the frames the log has at this point, checking each outcome.
    fn replay_frames(&mut self) {
        loop {
            let LogMode::Replay(r) = &mut self.log else {
                return;
            };
            let Some((data, recorded)) = replay_core::logged_frame(r.as_mut(), self.ordinal) else {
                return;
            };
            let replayed = self.platform.deliver_frame(&data).and_then(outcome_of);
            match replay_core::check_frame(self.ordinal, recorded, replayed) {
                None => r.stats.frames_verified += 1,
                Some(d) => {
                    self.diverged(d);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_log_entries() {
        assert_eq!(
            outcome_of(Ok(Delivery::Delivered { head: 3, len: 74 })),
            Some(PacketOutcome::Delivered { head: 3, len: 74 })
        );
        assert_eq!(
            outcome_of(Ok(Delivery::TooLarge { head: 1 })),
            Some(PacketOutcome::TooLarge { head: 1 })
        );
        assert_eq!(outcome_of(Ok(Delivery::NoBuffer)), None, "not logged");
        assert_eq!(
            outcome_of(Err(VirtioError::QueueInvalid { queue: 0 })),
            Some(PacketOutcome::Broken)
        );
    }

    #[test]
    fn a_replayed_offer_must_land_where_the_recorded_one_did() {
        let rec = PacketOutcome::Delivered { head: 2, len: 100 };
        assert_eq!(replay_mismatch(rec, Some(rec)), None);
        let (r, m) =
            replay_mismatch(rec, Some(PacketOutcome::Delivered { head: 3, len: 100 })).unwrap();
        assert!(r.contains("chain 2") && m.contains("chain 3"), "{r} / {m}");
        let (_, m) = replay_mismatch(rec, None).unwrap();
        assert_eq!(m, "no receive buffer");
        assert!(replay_mismatch(rec, Some(PacketOutcome::Broken)).is_some());
    }
}
