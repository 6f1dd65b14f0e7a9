//! ft-log: what a recording (primary) VMM tells a replaying (backup) VMM.
//!
//! The core here does no I/O: [`entry`] defines the log entries, [`codec`] turns them
//! into a versioned stream of framed, checksummed records and back (incrementally, so the
//! same decoder serves a file and a TCP stream), and [`stats`] counts what went by. For a
//! live primary/backup pair, [`channel`] frames the messages of the logging channel (the
//! log travels inside them), [`output`] keeps console output back until the backup has
//! verified the exit that produced it, and [`liveness`] tells when the peer has gone
//! silent. The log and the channel read their frames (header, length, CRC) with one
//! private reader, `frame`. The VMM owns files, sockets, threads and clocks.

// Every public item is documented; CI runs clippy with -D warnings, which keeps it so.
#![warn(missing_docs)]

pub mod channel;
pub mod codec;
pub mod entry;
mod frame;
pub mod liveness;
pub mod output;
pub mod pages;
#[cfg(test)]
mod simnet;
pub mod stats;

pub use channel::{
    encode_channel_header, encode_log_messages, encode_message, encode_pages_messages,
    ChannelError, MessageDecoder, ToBackup, ToPrimary, CHANNEL_MAGIC, CHANNEL_VERSION, MAX_MESSAGE,
};
pub use codec::{encode_entry, encode_header, CodecError, Decoder, FORMAT_VERSION, MAGIC};
pub use entry::{Delta, Digest, Entry, EventPoint, ExitKind, ExitRecord, PacketOutcome, Page};
pub use liveness::{Liveness, SendProgress};
pub use output::{OutputGate, OutputStats, Released};
pub use stats::LogStats;
