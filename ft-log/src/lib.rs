//! ft-log: what a recording (primary) VMM tells a replaying (backup) VMM.
//!
//! The core here does no I/O: [`entry`] defines the log entries, [`codec`] turns them
//! into a versioned stream of framed, checksummed records and back (incrementally, so the
//! same decoder serves a file and a TCP stream), and [`stats`] counts what went by. The VMM
//! owns files, sockets and threads.

pub mod codec;
pub mod entry;
pub mod stats;

pub use codec::{encode_entry, encode_header, CodecError, Decoder, FORMAT_VERSION, MAGIC};
pub use entry::{Delta, Digest, Entry, ExitKind, ExitRecord, Page};
pub use stats::LogStats;
