//! The role core's actions carried out: the link and the log pipe shut or closed, the
//! test-and-set asked, held output released or discarded, the VM's log switched off, the
//! guest finished or halted.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Node, Outcome};
use crate::ft::pipe::Pipe;
use crate::ft::role::{Action, Event};
use crate::ft::shared::Claim;
use crate::vcpu::LogMode;

impl Node {
    /// Step the core with `event`, carry out its actions, and step it again with what
    /// they answer (a claim's outcome), until nothing is left.
    pub(super) fn handle(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            match self.core.step(event) {
                Ok(actions) => {
                    for action in actions {
                        events.extend(self.carry_out(action));
                    }
                }
                // The controller sends what it observed; a race (an ack just as the link
                // went) can make that stale. The core changed nothing.
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }

    fn carry_out(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::ShutLink => {
                if let Some(link) = self.link.take() {
                    link.shutdown();
                }
            }
            Action::AbortPipe => {
                // Unstall the guest: its log and its output wait for the peer no more.
                self.sink.stop_waiting();
                if let Some(p) = self.pipe.take() {
                    p.abort();
                }
            }
            Action::ClosePipe => {
                if let Some(p) = self.pipe.take() {
                    p.close();
                }
            }
            Action::Claim { epoch } => {
                // A directory that does not answer in time is a claim not won.
                return Some(match self.opts.shared.claim(epoch, &self.who) {
                    Ok(Claim::Won(epoch)) => Event::ClaimWon {
                        epoch,
                        now_ns: self.now_ns(),
                    },
                    Ok(Claim::Lost { epoch, holder }) => Event::ClaimLost { epoch, holder },
                    Err(e) => Event::ClaimUnanswered {
                        epoch,
                        why: e.to_string(),
                    },
                });
            }
            Action::SetAlone => self.sink.set_alone(true),
            Action::DiscardHeld => self.dropped += self.sink.discard(),
            Action::Release { through } => self.sink.ack(through),
            Action::StopLogging => self.stop_logging(),
            Action::WaitSent { limit_ns } => {
                if let Some(link) = &self.link {
                    link.wait_sent(Duration::from_nanos(limit_ns));
                }
            }
            Action::GoLive { epoch, why } => {
                let pending = self.pipe.as_ref().map_or(0, Pipe::fill);
                if let Some(p) = self.pipe.take() {
                    p.close();
                }
                eprintln!(
                    "ftvm: primary lost ({why}); won epoch {epoch}; replaying the last {pending} bytes of log, then going live"
                );
            }
            Action::ServeStdout => self.sink.serve_stdout_from_here(),
            Action::Announce(notice) => {
                eprintln!("ftvm: {notice}");
                if notice.is_failover() {
                    self.failovers += 1;
                    self.last_failover = Some(notice.to_string());
                }
            }
            Action::WriteStatus(view) => self.write_status(view),
            Action::FinishGuest => self.outcome = Some(Outcome::Stopped(self.vm.vcpu.finish())),
            Action::Halt(reason) => {
                let msg = format!(
                    "{reason}: halting without {} bytes of unacknowledged output",
                    self.dropped
                );
                self.outcome = Some(Outcome::Halted(msg, self.vm.vcpu.finish()));
            }
        }
        None
    }

    /// Stop recording: pause the vCPU, switch its log off, resume. A vCPU that does not
    /// pause has stopped by itself, and the loop hears of that next.
    fn stop_logging(&mut self) {
        match self.vm.vcpu.pause(Duration::from_secs(10)) {
            Ok(()) => {
                if let Err(e) = self.vm.vcpu.set_log(LogMode::Off) {
                    tracing::warn!("cannot switch the log off: {e}");
                }
                self.vm.vcpu.resume();
            }
            Err(e) => tracing::warn!("cannot pause the vCPU to stop logging: {e}"),
        }
    }
}
