//! A primary taking a backup: the handshake, the state transfer and the live log.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ft_log::channel::ToBackup;

use super::doorman::{Candidate, Knock};
use super::{FtError, Node};
use crate::counters::LiveCounters;
use crate::ft::link::{chain, Link, LinkError, PrimaryAcks};
use crate::ft::pipe::Pipe;
use crate::ft::role::Event;
use crate::ft::transfer;

impl Node {
    /// A backup has knocked (its handshake done off this loop, see [`super::doorman`]):
    /// if this VMM can take one (`wanted`), transfer the state and start protecting the
    /// guest. The outcome, for the role core: joined, or failed to join (None: nobody
    /// knocked, or a knock not wanted now, which is closed at once).
    pub(super) fn accept_backup(&mut self, wanted: bool) -> Option<Event> {
        let knock = self.listener.as_ref()?.next()?;
        if !wanted {
            tracing::info!("a backup knocked while this VMM cannot take one: closed");
            return None;
        }
        Some(match knock {
            Knock::Failed { from, why } => Event::BackupFailedToJoin { from, why },
            Knock::Ready(candidate) => {
                let from = candidate.peer.to_string();
                match self.protect(*candidate) {
                    Ok(()) => Event::BackupJoined,
                    Err(e) => Event::BackupFailedToJoin {
                        from,
                        why: chain(&e),
                    },
                }
            }
        })
    }

    fn protect(&mut self, candidate: Candidate) -> Result<(), FtError> {
        let Candidate {
            mut stream,
            dec,
            peer,
            vm_name: name,
        } = candidate;
        if name != self.opts.shared.name() {
            // Tell it why before hanging up: it will say so and exit.
            return Err(LinkError::Protocol(format!(
                "the backup is for VM '{name}', this is '{}'",
                self.opts.shared.name()
            ))
            .into());
        }
        eprintln!("ftvm: backup joining from {peer}: transferring state");
        let pipe = Pipe::new(self.opts.buffer_bytes);
        self.pipe = Some(pipe.clone());
        self.counters = Arc::new(LiveCounters::default());
        self.delta_request.store(false, Ordering::SeqCst);
        let hello = ToBackup::Hello {
            vm_name: name,
            epoch: self.core.epoch(),
            mem_mib: self.vm.mem_mib,
            console_offset: self.sink.offset(),
        };
        let report = transfer::send_state(
            &self.vm,
            &mut stream,
            hello,
            &pipe,
            self.counters.clone(),
            &self.sink,
            self.opts.page_encoding,
        )?;
        self.acked.store(report.ordinal, Ordering::SeqCst);
        self.transfers += 1;
        self.last_transfer = Some(super::report::TransferFigures {
            pages: report.pages_sent,
            rounds: report.rounds as u64,
            paused: report.paused_for,
            took: report.took,
        });
        stream.set_read_timeout(None).map_err(LinkError::from)?;
        let link = Link::primary(
            stream,
            dec,
            pipe,
            PrimaryAcks {
                sink: self.sink.clone(),
                delta_request: self.delta_request.clone(),
                acked: self.acked.clone(),
                guest_ordinal: self.vm.exit_ordinal.clone(),
            },
            self.opts.link_limits(),
        )?;
        eprintln!(
            "ftvm: protected: {} pages ({} bytes sent) and {} KiB of disks in {} rounds, paused {:.1} ms, {:.2} s in all; logging from exit {}",
            report.pages_sent,
            report.page_bytes,
            report.disk_bytes_sent >> 10,
            report.rounds,
            report.paused_for.as_secs_f64() * 1e3,
            report.took.as_secs_f64(),
            report.ordinal
        );
        self.link = Some(link);
        Ok(())
    }
}
