//! The replaying side: reads the log ahead of the vCPU, counts what it replayed, reports
//! divergences.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ft_log::pages::{PageCodecError, PageSet, StateEncoding};
use ft_log::{CodecError, Decoder, Entry, LogStats};

use crate::counters::LiveCounters;

/// Why the replayer could not take the next entry off its log.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the log stream failed.
    #[error("cannot read the log")]
    Read(#[source] std::io::Error),
    /// The log is malformed or cut short inside an entry.
    #[error("corrupt log: {0}")]
    Codec(#[from] CodecError),
    /// A checkpoint delta's pages could not be decoded against the replayer's copy of
    /// memory (and no later delta can be trusted).
    #[error("checkpoint delta at exit {ordinal}")]
    Pages {
        /// Exit ordinal of the delta.
        ordinal: u64,
        /// The page codec's error.
        #[source]
        source: ft_log::pages::PageCodecError,
    },
}

/// Counters of a replay.
#[derive(Debug, Default, Clone)]
pub struct ReplayStats {
    /// Synchronous exits that matched their logged record.
    pub exits_verified: u64,
    /// Checkpoint deltas loaded into the machine.
    pub deltas_applied: u64,
    /// Pages those deltas listed.
    pub delta_pages_applied: u64,
    /// Divergences from the log found.
    pub divergences: u64,
    /// Exits the recorder made while the replayer, recovering from a divergence, skipped.
    pub exits_skipped: u64,
    /// Received frames offered at their logged exit with the logged outcome.
    pub frames_verified: u64,
}

/// Reads a log from a byte stream ahead of the replaying vCPU and keeps its counts.
pub struct Replayer {
    source: Box<dyn Read + Send>,
    decoder: Decoder,
    ahead: VecDeque<(Entry, usize)>,
    eof: bool,
    /// Entries and bytes taken off the log so far, by kind.
    pub log_stats: LogStats,
    /// What the replay verified, applied and found diverged.
    pub stats: ReplayStats,
    /// A divergence was found: skip to the next delta.
    pub recovering: bool,
    /// A live log from a primary (not a file): its end is where the backup goes live, and
    /// a frame cut short by the primary's death is dropped, not an error.
    live: bool,
    /// Shared with the backup's controller.
    counters: Arc<LiveCounters>,
    /// Entries taken off the log so far (to tell whether a step made progress).
    popped: u64,
    /// The copy of the recorder's pages that delta pages are encoded against (see
    /// `ft_log::pages`); without one, deltas are passed on as logged.
    shadow: Option<ft_log::pages::Shadow>,
    /// The previous delta's states, which encoded states are sent against.
    states: [ft_log::pages::StateCodec; 2],
    /// A delta whose pages could not be decoded: the copy no longer matches the
    /// recorder's, so no later delta can be trusted either (every read fails with it).
    pages_failed: Option<(u64, ft_log::pages::PageCodecError)>,
    /// Where a diverged backup puts the output its primary held at the checkpoint it
    /// asked for (see `Entry::HeldOutput`); taken off the log as it is read.
    held_output: Option<HeldOutputSink>,
}

/// Takes a primary's held console output: (checkpoint ordinal, console position, bytes).
pub type HeldOutputSink = Box<dyn FnMut(u64, u64, &[u8]) + Send>;

impl Replayer {
    /// A replayer of the log file read from `source` (stream header first), without a copy
    /// of memory: deltas are passed on as logged.
    pub fn new(source: Box<dyn Read + Send>) -> Self {
        crate::pagecheck::start(false);
        Self {
            source,
            decoder: Decoder::new(),
            ahead: VecDeque::new(),
            eof: false,
            log_stats: LogStats::default(),
            stats: ReplayStats::default(),
            recovering: false,
            live: false,
            counters: Arc::default(),
            popped: 0,
            shadow: None,
            states: Default::default(),
            pages_failed: None,
            held_output: None,
        }
    }

    /// Hand the primary's held output to `sink` while recovering from a divergence (an
    /// in-step replay produces those bytes itself); without a sink it is dropped.
    pub fn on_held_output(&mut self, sink: HeldOutputSink) {
        self.held_output = Some(sink);
    }

    /// Decode delta pages against `shadow`, the machine's memory at the log's start. Every
    /// delta taken off the log (applied or skipped) updates it, as every delta logged
    /// updated the recorder's.
    pub fn with_shadow(mut self, shadow: ft_log::pages::Shadow) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// A replayer of a primary's live log, publishing its progress in `counters`.
    pub fn live(source: Box<dyn Read + Send>, counters: Arc<LiveCounters>) -> Self {
        Self {
            live: true,
            counters,
            ..Self::new(source)
        }
    }

    /// Whether the log is a primary's live log rather than a file.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Everything through exit `ordinal` has been executed and checked.
    pub fn set_verified(&mut self, ordinal: u64) {
        self.counters.verified.store(ordinal, Ordering::SeqCst);
    }

    /// A delta was applied: in step with the recorder again.
    pub fn delta_applied(&mut self) {
        self.counters.deltas.fetch_add(1, Ordering::Relaxed);
        self.set_recovering(false);
    }

    /// Start (`on`) or stop skipping to the next delta after a divergence; published to
    /// the controller.
    pub fn set_recovering(&mut self, on: bool) {
        self.recovering = on;
        self.counters.recovering.store(on, Ordering::SeqCst);
    }

    /// A live log has ended (the primary is gone and this backup won the right to go
    /// live) and every whole entry in it has been taken.
    pub fn live_log_ended(&mut self) -> Result<bool, ReplayError> {
        Ok(self.live && self.peek(0)?.is_none())
    }

    /// Decode until `n` entries are buffered or the log ends.
    fn fill(&mut self, n: usize) -> Result<(), ReplayError> {
        if let Some((ordinal, source)) = &self.pages_failed {
            return Err(ReplayError::Pages {
                ordinal: *ordinal,
                source: source.clone(),
            });
        }
        let mut buf = vec![0u8; 64 * 1024];
        while self.ahead.len() < n {
            let before = self.decoder.consumed();
            if let Some(e) = self.decoder.next_entry()? {
                let size = (self.decoder.consumed() - before) as usize;
                if let Entry::HeldOutput {
                    ordinal,
                    position,
                    bytes,
                } = &e
                {
                    // Not an event to replay: the console's business, taken as read (the
                    // checkpoint after it is what the recovering replay waits for).
                    self.log_stats.count(&e, size);
                    if let Some(sink) = self.held_output.as_mut().filter(|_| self.recovering) {
                        sink(*ordinal, *position, bytes);
                    }
                    continue;
                }
                self.ahead.push_back((e, size));
                continue;
            }
            if self.eof {
                if self.live {
                    // The frame the primary was sending when it died never counted.
                    return Ok(());
                }
                // Sticky: a log cut inside a frame says so on every later read too.
                return Ok(self.decoder.finish()?);
            }
            let got = match self.source.read(&mut buf) {
                Ok(n) => n,
                // A signal interrupted the read: nothing was lost, read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReplayError::Read(e)),
            };
            if got == 0 {
                self.eof = true;
                if self.live {
                    if let Err(e) = self.decoder.finish() {
                        tracing::info!("the primary's last frame was cut short ({e}); dropped");
                    }
                    return Ok(());
                }
                self.decoder.finish()?;
            } else {
                self.decoder.push(&buf[..got]);
            }
        }
        Ok(())
    }

    /// The `i`-th entry ahead, if the log has one.
    pub fn peek(&mut self, i: usize) -> Result<Option<&Entry>, ReplayError> {
        self.fill(i + 1)?;
        Ok(self.ahead.get(i).map(|(e, _)| e))
    }

    /// Entries taken off the log so far.
    pub fn popped(&self) -> u64 {
        self.popped
    }

    /// Take the next entry off the log (`None` at its end), decoding a delta's pages and
    /// states.
    pub fn pop(&mut self) -> Result<Option<Entry>, ReplayError> {
        self.fill(1)?;
        let Some((mut e, size)) = self.ahead.pop_front() else {
            return Ok(None);
        };
        self.popped += 1;
        self.log_stats.count(&e, size);
        trace_entry(&e);
        if let Entry::Delta(d) = &mut e {
            if let Err(source) = self.decode_delta(d) {
                self.pages_failed = Some((d.ordinal, source.clone()));
                return Err(ReplayError::Pages {
                    ordinal: d.ordinal,
                    source,
                });
            }
        }
        Ok(Some(e))
    }

    /// The recorder's whole memory as of the last delta read (every non-zero page of this
    /// side's copy), if this replayer keeps a copy.
    pub fn whole_memory(&self) -> Option<Vec<ft_log::Page>> {
        self.shadow.as_ref().map(|s| s.whole_pages())
    }

    /// Decode a delta's states and pages against this side's copies (with a shadow only:
    /// a reader without one passes deltas on as logged).
    fn decode_delta(&mut self, d: &mut ft_log::Delta) -> Result<(), PageCodecError> {
        let Some(shadow) = self.shadow.as_mut() else {
            return Ok(());
        };
        if d.state_encoding == StateEncoding::XorLz4 {
            d.vcpu = self.states[0].decode(&d.vcpu)?;
            d.devices = self.states[1].decode(&d.devices)?;
            d.state_encoding = StateEncoding::Raw;
        }
        let set = std::mem::take(&mut d.pages);
        d.pages = PageSet::Raw(shadow.apply(set, d.full)?);
        Ok(())
    }

    /// Record a divergence (reported at once) and start recovering.
    pub fn diverged(&mut self, ordinal: u64, what: &str, recorded: String, replayed: String) {
        self.stats.divergences += 1;
        self.counters.divergences.fetch_add(1, Ordering::Relaxed);
        self.set_recovering(true);
        tracing::warn!(
            "divergence at exit {ordinal}: {what}: recorded {recorded}, replayed {replayed}; \
             recovering from the next checkpoint delta"
        );
    }
}

fn trace_entry(e: &Entry) {
    match e {
        Entry::Exit(x) => tracing::trace!(
            "entry: exit {} {:?} rip {:#x} addr {:#x} value {:#x} t {}",
            x.ordinal,
            x.kind,
            x.rip,
            x.addr,
            x.value,
            x.time_ns
        ),
        Entry::Delta(d) => tracing::trace!(
            "entry: delta at {} t {} pages {} full {}",
            d.ordinal,
            d.time_ns,
            d.pages.len(),
            d.full
        ),
        Entry::Interrupt { ordinal, vector } => {
            tracing::trace!("entry: interrupt {vector:#x} at {ordinal}")
        }
        other => tracing::trace!(
            "entry: {} at {}",
            Entry::kind_name(other.kind()),
            other.ordinal()
        ),
    }
}

/// The NIC (its MAC) of the machine a log was recorded on: the `Nic` entry right after
/// `Start`, if there is one. Read before the replayed machine is built, whose kernel
/// command line depends on whether it has a PCI bus.
pub fn logged_nic(mut source: impl Read) -> Result<Option<[u8; 6]>, ReplayError> {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 4096];
    let mut seen = 0;
    loop {
        while let Some(entry) = decoder.next_entry()? {
            seen += 1;
            match (seen, entry) {
                (1, Entry::Start { .. }) => {}
                (2, Entry::Nic { mac }) => return Ok(Some(mac)),
                _ => return Ok(None),
            }
        }
        let got = match source.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReplayError::Read(e)),
        };
        decoder.push(&buf[..got]);
    }
}

#[cfg(test)]
mod tests;
