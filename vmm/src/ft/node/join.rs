//! A primary taking a backup: the handshake, the state transfer and the live log.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft_log::channel::{MessageDecoder, ToBackup, ToPrimary};

use super::{FtError, Node, HANDSHAKE_LIMIT};
use crate::counters::LiveCounters;
use crate::ft::link::{chain, recv, Link, LinkError, PrimaryAcks};
use crate::ft::pipe::Pipe;
use crate::ft::role::Event;
use crate::ft::secure::SecureStream;
use crate::ft::transfer;

impl Node {
    /// A backup is knocking: transfer the state and start protecting the guest. The
    /// outcome, for the role core: joined, or failed to join (None: nobody knocked).
    pub(super) fn accept_backup(&mut self) -> Option<Event> {
        let listener = self.listener.as_ref()?;
        let (stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                tracing::warn!("accepting a backup failed: {e}");
                return None;
            }
        };
        Some(match self.protect(stream) {
            Ok(()) => Event::BackupJoined,
            Err(e) => Event::BackupFailedToJoin {
                from: from.to_string(),
                why: chain(&e),
            },
        })
    }

    fn protect(&mut self, tcp: TcpStream) -> Result<(), FtError> {
        tcp.set_nodelay(true).map_err(LinkError::from)?;
        let peer = tcp.peer_addr().map_err(LinkError::from)?;
        // Nothing about the guest goes to a peer that has not proved it holds the key.
        let mut stream =
            SecureStream::accept(tcp, &self.opts.key, HANDSHAKE_LIMIT).map_err(|source| {
                FtError::Secure {
                    peer: peer.to_string(),
                    source,
                }
            })?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(LinkError::from)?;
        let mut dec = MessageDecoder::<ToPrimary>::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let name = loop {
            match recv(&mut stream, &mut dec)? {
                Some(ToPrimary::Hello { vm_name }) => break vm_name,
                Some(_) => return Err(LinkError::Protocol("no hello".into()).into()),
                None if Instant::now() > deadline => {
                    return Err(LinkError::Timeout(Duration::from_secs(10)).into())
                }
                None => {}
            }
        };
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
            self.opts.peer_timeout,
        )?;
        eprintln!(
            "ftvm: protected: {} pages ({} bytes sent) in {} rounds, paused {:.1} ms, {:.2} s in all; logging from exit {}",
            report.pages_sent,
            report.page_bytes,
            report.rounds,
            report.paused_for.as_secs_f64() * 1e3,
            report.took.as_secs_f64(),
            report.ordinal
        );
        self.link = Some(link);
        Ok(())
    }
}
