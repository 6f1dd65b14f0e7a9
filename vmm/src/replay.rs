//! The replaying side: reads the log ahead of the vCPU, counts what it replayed, reports
//! divergences.

use std::collections::VecDeque;
use std::io::Read;

use ft_log::{CodecError, Decoder, Entry, LogStats};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read the log")]
    Read(#[source] std::io::Error),
    #[error("corrupt log: {0}")]
    Codec(#[from] CodecError),
}

/// Counters of a replay.
#[derive(Debug, Default, Clone)]
pub struct ReplayStats {
    pub exits_verified: u64,
    pub deltas_applied: u64,
    pub delta_pages_applied: u64,
    pub divergences: u64,
    /// Exits the recorder made while the replayer, recovering from a divergence, skipped.
    pub exits_skipped: u64,
}

pub struct Replayer {
    source: Box<dyn Read + Send>,
    decoder: Decoder,
    ahead: VecDeque<(Entry, usize)>,
    eof: bool,
    pub log_stats: LogStats,
    pub stats: ReplayStats,
    /// A divergence was found: skip to the next delta.
    pub recovering: bool,
}

impl Replayer {
    pub fn new(source: Box<dyn Read + Send>) -> Self {
        Self {
            source,
            decoder: Decoder::new(),
            ahead: VecDeque::new(),
            eof: false,
            log_stats: LogStats::default(),
            stats: ReplayStats::default(),
            recovering: false,
        }
    }

    /// Decode until `n` entries are buffered or the log ends.
    fn fill(&mut self, n: usize) -> Result<(), ReplayError> {
        let mut buf = vec![0u8; 64 * 1024];
        while self.ahead.len() < n {
            let before = self.decoder.consumed();
            if let Some(e) = self.decoder.next_entry()? {
                let size = (self.decoder.consumed() - before) as usize;
                self.ahead.push_back((e, size));
                continue;
            }
            if self.eof {
                // Sticky: a log cut inside a frame says so on every later read too.
                return Ok(self.decoder.finish()?);
            }
            let got = self.source.read(&mut buf).map_err(ReplayError::Read)?;
            if got == 0 {
                self.eof = true;
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

    pub fn pop(&mut self) -> Result<Option<Entry>, ReplayError> {
        self.fill(1)?;
        Ok(self.ahead.pop_front().map(|(e, size)| {
            self.log_stats.count(&e, size);
            e
        }))
    }

    /// Record a divergence (reported at once) and start recovering.
    pub fn diverged(&mut self, ordinal: u64, what: &str, recorded: String, replayed: String) {
        self.stats.divergences += 1;
        self.recovering = true;
        tracing::warn!(
            "divergence at exit {ordinal}: {what}: recorded {recorded}, replayed {replayed}; \
             recovering from the next checkpoint delta"
        );
    }
}
