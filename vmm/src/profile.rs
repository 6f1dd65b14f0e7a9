//! A guest profiler: `--profile FILE [--profile-symbols System.map]`.
//!
//! The vCPU thread samples where the guest is (RIP and CPL) whenever it is out of KVM_RUN
//! and at least [`INTERVAL`] of host time has passed since the last sample. It only reads
//! registers, so the guest's run (and a recording of it) is the same with or without it.
//! Exits happen at the guest's I/O instructions and, in long stretches without any, at
//! the kicker's signals; so each sample is weighted by the host time since the previous
//! one, and the report gives shares of time, not of samples. Host time the vCPU spends
//! halted, waiting for a timer or input, is not guest work: it is reported on a line of
//! its own instead of being charged to the first instruction after the wake (a boot's
//! profile once named the PIC's unmask and the UART's status read as its hottest code). Kernel addresses are named
//! from a System.map (or `/proc/kallsyms`) when one is given: the symbol at or below the
//! address.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Least host time between two samples.
pub const INTERVAL: Duration = Duration::from_millis(1);
/// Most distinct addresses kept (a guest jumping everywhere must not grow this without
/// bound); later new addresses count under "(other)".
const MAX_ADDRESSES: usize = 200_000;
/// Symbols file lines read at most (a System.map has about 150,000).
const MAX_SYMBOLS: usize = 2_000_000;

/// Why a profile could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The `--profile-symbols` file could not be read.
    #[error("cannot read the symbols file {path}")]
    Symbols {
        /// Path of the symbols file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The report could not be written to the `--profile` file.
    #[error("cannot write the profile to {path}")]
    Write {
        /// Path of the profile file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The process's profile request (one VMM process runs one guest): set by the command
/// line before the VM is built, taken by the vCPU thread when it starts.
static REQUESTED: std::sync::OnceLock<(PathBuf, Option<PathBuf>)> = std::sync::OnceLock::new();

/// Ask for a profile of this process's guest, written to `output` when the vCPU stops.
pub fn request(output: PathBuf, symbols: Option<PathBuf>) {
    let _ = REQUESTED.set((output, symbols));
}

/// A profiler if one was requested.
pub fn requested() -> Option<Profiler> {
    REQUESTED
        .get()
        .map(|(o, s)| Profiler::new(o.clone(), s.clone()))
}

/// Where a sample found the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spot {
    /// The guest's instruction pointer.
    pub rip: u64,
    /// The guest's privilege level (0 kernel, 3 user).
    pub cpl: u8,
}

/// Time-weighted samples of one run.
#[derive(Debug)]
pub struct Profiler {
    output: PathBuf,
    symbols: Option<PathBuf>,
    last: Instant,
    weights: HashMap<Spot, Duration>,
    other: Duration,
    /// Host time spent halted (see [`Profiler::halted`]).
    halted: Duration,
    samples: u64,
}

impl Profiler {
    /// A profiler with no samples yet that writes its report to `output`, naming kernel
    /// addresses from the `symbols` file if given.
    pub fn new(output: PathBuf, symbols: Option<PathBuf>) -> Self {
        Self {
            output,
            symbols,
            last: Instant::now(),
            weights: HashMap::new(),
            other: Duration::ZERO,
            halted: Duration::ZERO,
            samples: 0,
        }
    }

    /// Whether a sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= INTERVAL
    }

    /// Count `spot` for the time since the last sample.
    pub fn record(&mut self, spot: Spot, now: Instant) {
        let weight = now.saturating_duration_since(self.last);
        self.last = now;
        self.samples += 1;
        if let Some(w) = self.weights.get_mut(&spot) {
            *w += weight;
        } else if self.weights.len() < MAX_ADDRESSES {
            self.weights.insert(spot, weight);
        } else {
            self.other += weight;
        }
    }

    /// The vCPU was halted for `took` (waiting for a timer, input or a command): counted
    /// apart and left out of the next sample's weight.
    pub fn halted(&mut self, took: Duration) {
        self.halted += took;
        self.last = self.last.checked_add(took).unwrap_or(self.last);
    }

    /// Write the flat profile to the output file.
    pub fn write(&self) -> Result<(), ProfileError> {
        let symbols = match &self.symbols {
            Some(p) => Some(Symbols::load(p)?),
            None => None,
        };
        let text = self.report(symbols.as_ref());
        let err = |source| ProfileError::Write {
            path: self.output.clone(),
            source,
        };
        let mut f = std::fs::File::create(&self.output).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)
    }

    /// The report: totals, the share by CPL, then the top functions (or addresses).
    pub fn report(&self, symbols: Option<&Symbols>) -> String {
        let total: Duration = self.weights.values().sum::<Duration>() + self.other + self.halted;
        let secs = total.as_secs_f64().max(1e-9);
        let mut by_cpl = [Duration::ZERO; 4];
        let mut by_name: HashMap<String, (Duration, u8)> = HashMap::new();
        for (spot, w) in &self.weights {
            by_cpl[usize::from(spot.cpl & 3)] += *w;
            let name = match (spot.cpl, symbols.and_then(|s| s.name(spot.rip))) {
                (0, Some(n)) => n.to_owned(),
                (0, None) => format!("kernel {:#x}", spot.rip & !0xfff),
                (_, _) => format!("user {:#x}", spot.rip & !0xfff),
            };
            let e = by_name.entry(name).or_insert((Duration::ZERO, spot.cpl));
            e.0 += *w;
        }
        let mut rows: Vec<_> = by_name.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        let mut out = format!(
            "ftvm guest profile: {} samples over {:.1} s of host time (time-weighted)\n\
             CPL0 {:.1}%  CPL3 {:.1}%  halted {:.1}%\n\n{:>7}  {:>9}  where ({})\n",
            self.samples,
            secs,
            100.0 * by_cpl[0].as_secs_f64() / secs,
            100.0 * by_cpl[3].as_secs_f64() / secs,
            100.0 * self.halted.as_secs_f64() / secs,
            "share",
            "seconds",
            if symbols.is_some() {
                "kernel functions from the symbols file; user pages"
            } else {
                "4 KiB pages: give --profile-symbols System.map for names"
            }
        );
        if !self.halted.is_zero() {
            out.push_str(&format!(
                "{:>6.2}%  {:>9.3}  (halted: waiting for a timer or input)\n",
                100.0 * self.halted.as_secs_f64() / secs,
                self.halted.as_secs_f64()
            ));
        }
        for (name, (w, _)) in rows.iter().take(40) {
            out.push_str(&format!(
                "{:>6.2}%  {:>9.3}  {name}\n",
                100.0 * w.as_secs_f64() / secs,
                w.as_secs_f64()
            ));
        }
        if !self.other.is_zero() {
            out.push_str(&format!(
                "{:>6.2}%  {:>9.3}  (other: more distinct addresses than kept)\n",
                100.0 * self.other.as_secs_f64() / secs,
                self.other.as_secs_f64()
            ));
        }
        out
    }
}

/// Text symbols of a System.map or /proc/kallsyms, sorted by address.
#[derive(Debug, Default)]
pub struct Symbols {
    entries: Vec<(u64, String)>,
}

impl Symbols {
    /// Read and parse a symbols file (see [`Symbols::parse`]).
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Symbols {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse(&text))
    }

    /// Lines of "ADDRESS TYPE NAME"; only text symbols (t/T); anything else is skipped.
    pub fn parse(text: &str) -> Self {
        let mut entries: Vec<(u64, String)> = text
            .lines()
            .take(MAX_SYMBOLS)
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                let name = f.next()?;
                matches!(kind, "t" | "T").then(|| (addr, name.to_owned()))
            })
            .collect();
        entries.sort_unstable();
        Self { entries }
    }

    /// The symbol at or below `addr`.
    pub fn name(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|(a, _)| *a <= addr);
        i.checked_sub(1).map(|i| self.entries[i].1.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_name_the_function_at_or_below() {
        let s = Symbols::parse(
            "ffffffff81000000 T _text\nffffffff81001000 t do_one\nffffffff81002000 D data\nbad line\nffffffff81003000 T two\n",
        );
        assert_eq!(s.name(0xffffffff81000010), Some("_text"));
        assert_eq!(s.name(0xffffffff81001fff), Some("do_one"));
        assert_eq!(
            s.name(0xffffffff81002500),
            Some("do_one"),
            "data is not code"
        );
        assert_eq!(s.name(0xffffffff81003001), Some("two"));
        assert_eq!(s.name(0x1000), None);
    }

    #[test]
    fn the_report_weighs_samples_by_time() {
        let mut p = Profiler::new(PathBuf::from("/dev/null"), None);
        let t0 = p.last;
        let k = Spot {
            rip: 0xffffffff81001234,
            cpl: 0,
        };
        let u = Spot {
            rip: 0x401000,
            cpl: 3,
        };
        assert!(!p.due(t0));
        assert!(p.due(t0 + INTERVAL));
        p.record(k, t0 + Duration::from_millis(30));
        p.record(u, t0 + Duration::from_millis(40));
        // 100 ms halted, then 60 ms of work ending in `hot`: only the work is its.
        p.halted(Duration::from_millis(100));
        p.record(k, t0 + Duration::from_millis(200));
        let syms = Symbols::parse("ffffffff81001000 T hot\n");
        let r = p.report(Some(&syms));
        assert!(r.contains("3 samples over 0.2 s"), "{r}");
        assert!(r.contains("CPL0 45.0%  CPL3 5.0%  halted 50.0%"), "{r}");
        let hot = r.lines().find(|l| l.ends_with(" hot")).unwrap();
        assert!(hot.trim_start().starts_with("45.00%"), "{r}");
        assert!(r.contains("50.00%      0.100  (halted"), "{r}");
        assert!(r.contains("user 0x401000"), "{r}");
    }
}
