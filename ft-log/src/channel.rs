//! The logging channel between a primary and a backup VMM: the messages and their bytes.
//!
//! Primary and backup talk over one TCP connection. Each direction is its own byte stream:
//! a 12-byte header (the magic `FTVMCHN\0` and [`CHANNEL_VERSION`], u32 LE), then frames,
//! each:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | payload length (u32 LE) |
//! | 4 | CRC32 of the payload (u32 LE) |
//! | n | payload: one message, bincode (standard config) |
//!
//! The primary sends [`ToBackup`] messages, the backup [`ToPrimary`]. The log itself travels
//! inside [`ToBackup::Log`] as the bytes of ft-log's own format ([`crate::codec`]), cut
//! wherever the sender likes, so the backup runs a [`crate::Decoder`] over the
//! concatenated `Log` payloads exactly as it would over a log file.
//!
//! TCP already promises an ordered, complete byte stream, so the checksum is there for what
//! TCP does not catch: a VMM bug that writes half a buffer, memory corruption, a peer that
//! is not an ftvm at all. Like [`crate::codec`], the decoder is incremental, bounds every
//! length before allocating, and names the frame and stream byte offset of any damage. It
//! cannot notice the loss of whole frames (there is no sequence number); the log stream
//! inside catches that for `Log` messages, because the replayer checks every exit ordinal.
//!
//! The framing is read by the `frame` module, shared with [`crate::codec`] (whose frames
//! add a kind byte). This module does no I/O: the VMM owns the socket.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::entry::Page;
use crate::frame::{decode_exact, frame_error_into, Format, FrameReader};
use crate::pages::PageSet;

/// The first 8 bytes of each direction's stream.
pub const CHANNEL_MAGIC: &[u8; 8] = b"FTVMCHN\0";
/// The channel protocol version, stored after [`CHANNEL_MAGIC`]; both sides must speak
/// the same one.
pub const CHANNEL_VERSION: u32 = 2;
/// Stream header: magic and version.
pub const CHANNEL_HEADER_LEN: usize = crate::frame::STREAM_HEADER_LEN;
/// Frame header: payload length and CRC32.
pub const MESSAGE_HEADER_LEN: usize = FORMAT.frame_header_len();
/// Largest payload accepted. The largest legitimate messages are a [`ToBackup::Pages`] batch
/// of [`MAX_PAGES_PER_MESSAGE`] pages (about 4 MiB) and a [`ToBackup::Machine`] state
/// (kilobytes); anything much longer is damage (or an attack), refused before allocating.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Pages per [`ToBackup::Pages`] message, as [`encode_pages_messages`] batches them.
pub const MAX_PAGES_PER_MESSAGE: usize = 1024;
/// Log bytes per [`ToBackup::Log`] message, as [`encode_log_messages`] cuts them. Small
/// enough that a large log entry (a checkpoint delta) is streamed, not sent in one piece.
pub const MAX_LOG_CHUNK: usize = 1 << 20;

/// Primary -> backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToBackup {
    /// First message after the stream header.
    Hello {
        /// Name of the VM the primary runs; a backup for another VM gives up.
        vm_name: String,
        /// The epoch the primary holds (the test-and-set it won); the backup checks it
        /// against the shared record.
        epoch: u64,
        /// Size of guest memory, in MiB.
        mem_mib: u64,
        /// Where the primary's console stream stood (bytes the guest had written to its
        /// console) when the transfer began.
        console_offset: u64,
    },
    /// Guest pages of the state transfer (pre-copy rounds and the final round), encoded
    /// against what the backup received before (see [`crate::pages`]).
    Pages(PageSet),
    /// End of state transfer: the machine state (encoded by the VMM, opaque here) at exit
    /// `ordinal`.
    Machine {
        /// Exit ordinal the state was taken at; the log continues from there.
        ordinal: u64,
        /// The machine state as the VMM encoded it.
        state: Vec<u8>,
    },
    /// The next bytes of the log stream (ft-log's own format), in order.
    Log(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Nothing to say: sent so the backup keeps hearing from the primary (see
    /// [`crate::liveness`]).
    Heartbeat,
    /// State transfer of a guest with disks, right after the hello: each disk's size in
    /// bytes, in device order. The backup's copies must have these sizes.
    Disks {
        /// Size of each disk in bytes, in device order.
        bytes: Vec<u64>,
    },
    /// State transfer: `len` bytes of disk `disk` at `offset`, which are `data`, or zeros
    /// when `data` is empty. Chunks written again while the transfer runs come again.
    DiskChunk {
        /// Index of the disk, in the order of [`ToBackup::Disks`].
        disk: u32,
        /// Byte offset of the chunk in the disk.
        offset: u64,
        /// Bytes the chunk covers.
        len: u32,
        /// The chunk's bytes, or empty when they are all zeros.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The log is complete (the primary's guest stopped and its shutdown entry was sent):
    /// the connection closing after this is the end of the run, not a failure.
    Goodbye,
}

/// Primary -> backup, borrowing: serializes to exactly the bytes of the [`ToBackup`] variant
/// of the same position (serde writes a slice and a `Vec` alike), so bulk data need not be
/// copied into an owned message just to be encoded. Variant order must match [`ToBackup`];
/// a test checks it.
#[derive(Serialize)]
enum ToBackupRef<'a> {
    #[allow(dead_code)]
    Hello {
        vm_name: &'a str,
        epoch: u64,
        mem_mib: u64,
        console_offset: u64,
    },
    Pages(&'a PageSet),
    #[allow(dead_code)]
    Machine {
        ordinal: u64,
        state: &'a [u8],
    },
    Log(&'a [u8]),
}

/// Backup -> primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToPrimary {
    /// First message after the stream header: the backup asks to protect a VM.
    Hello {
        /// Name of the VM this backup is for; the primary refuses a backup for another.
        vm_name: String,
    },
    /// The backup has replayed and verified the log through this exit ordinal.
    Ack {
        /// Ordinal of the last exit the backup verified.
        ordinal: u64,
    },
    /// Nothing to say: sent so the primary keeps hearing from the backup (see
    /// [`crate::liveness`]).
    Heartbeat,
    /// The backup's replay diverged: take a checkpoint delta at the next exit so it can
    /// get back in step (DESIGN.md section 2, "Verification and divergence").
    Resync,
}

/// Why one direction of the channel could not be decoded. Frame numbers count from 0;
/// offsets are bytes from the start of that direction's stream, header included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The stream does not start with [`CHANNEL_MAGIC`]: the peer is not an ftvm.
    #[error("logging channel: peer is not an ftvm VMM (bad magic)")]
    BadMagic,
    /// The peer speaks another channel version than [`CHANNEL_VERSION`].
    #[error(
        "logging channel: peer speaks version {found}; this ftvm speaks version {CHANNEL_VERSION}"
    )]
    Version {
        /// The version in the peer's stream header.
        found: u32,
    },
    /// A frame claims a payload longer than [`MAX_MESSAGE`]; refused before allocating.
    #[error("logging channel: frame {frame} at byte {offset}: length {len} exceeds the limit of {MAX_MESSAGE} bytes")]
    TooLarge {
        /// Number of the frame.
        frame: u64,
        /// Stream offset where the frame starts.
        offset: u64,
        /// Payload length the frame claims, in bytes.
        len: usize,
    },
    /// A frame's stored CRC32 does not match its payload.
    #[error("logging channel: frame {frame} at byte {offset}: checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// Number of the frame.
        frame: u64,
        /// Stream offset where the frame starts.
        offset: u64,
        /// CRC32 stored in the frame header.
        stored: u32,
        /// CRC32 computed over the payload that arrived.
        computed: u32,
    },
    /// A frame's checksum matched but its payload is not a valid message.
    #[error("logging channel: frame {frame} at byte {offset}: undecodable message: {reason}")]
    Payload {
        /// Number of the frame.
        frame: u64,
        /// Stream offset where the frame starts.
        offset: u64,
        /// What the deserializer objected to.
        reason: String,
    },
    /// The stream ended partway through a frame.
    #[error("logging channel: stream ends inside frame {frame} at byte {offset} ({have} of {need} bytes)")]
    Truncated {
        /// Number of the cut-off frame.
        frame: u64,
        /// Stream offset where the frame starts.
        offset: u64,
        /// Bytes of the frame that arrived.
        have: usize,
        /// Bytes the whole frame needs, header and payload (only the header, if its
        /// length field did not arrive).
        need: usize,
    },
    /// The stream ended before the whole stream header arrived.
    #[error(
        "logging channel: stream ends inside its header ({have} of {CHANNEL_HEADER_LEN} bytes)"
    )]
    TruncatedHeader {
        /// Bytes of the header that arrived.
        have: usize,
    },
}

static FORMAT: Format = Format {
    magic: CHANNEL_MAGIC,
    version: CHANNEL_VERSION,
    tag_len: 0,
    max_payload: MAX_MESSAGE,
};

// The channel's frames have no tag.
frame_error_into!(ChannelError, |_tag| {});

/// The stream header, sent once by each side before its first message.
pub fn encode_channel_header() -> Vec<u8> {
    FORMAT.header()
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    // A payload over u32::MAX cannot be framed; saturating makes the peer refuse it as
    // TooLarge instead of misreading a wrapped length.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.reserve(MESSAGE_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn encode_into<M: Serialize>(m: &M, out: &mut Vec<u8>) {
    // Encoding plain data into a Vec cannot fail; a message over MAX_MESSAGE is a VMM bug
    // that the peer's decoder refuses, so encode without the limit here.
    let payload = bincode::serde::encode_to_vec(m, bincode::config::standard()).unwrap_or_default();
    frame(&payload, out);
}

/// One frame holding `m`. Keep messages under [`MAX_MESSAGE`] (the batching helpers
/// below do); the peer refuses longer ones.
pub fn encode_message<M: Serialize>(m: &M) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(m, &mut out);
    out
}

/// `log` (bytes of ft-log's stream, any cut of it) as [`ToBackup::Log`] frames of at most
/// [`MAX_LOG_CHUNK`] bytes each, concatenated; empty for empty input. Same bytes as
/// encoding each `ToBackup::Log(chunk.to_vec())`, without the copy.
pub fn encode_log_messages(log: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.len() + 16);
    for chunk in log.chunks(MAX_LOG_CHUNK) {
        encode_into(&ToBackupRef::Log(chunk), &mut out);
    }
    out
}

/// `pages` as [`ToBackup::Pages`] frames of at most [`MAX_PAGES_PER_MESSAGE`] pages each,
/// concatenated; empty for no pages.
pub fn encode_pages_messages(pages: &[Page]) -> Vec<u8> {
    let mut out = Vec::new();
    for batch in pages.chunks(MAX_PAGES_PER_MESSAGE) {
        encode_into(&ToBackupRef::Pages(&PageSet::Raw(batch.to_vec())), &mut out);
    }
    out
}

/// Incremental decoder for one direction of the channel: push bytes as they arrive, pull
/// messages. After an error it stays put (the same error again): a byte stream cannot be
/// resynchronised, the connection has to go.
pub struct MessageDecoder<M> {
    frames: FrameReader,
    /// `fn() -> M`: the decoder makes `M`s but holds none, so it is Send/Sync whatever `M`.
    _message: PhantomData<fn() -> M>,
}

impl<M> Default for MessageDecoder<M> {
    fn default() -> Self {
        Self {
            frames: FrameReader::new(&FORMAT),
            _message: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for MessageDecoder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageDecoder")
            .field("header_done", &self.frames.header_done())
            .field("frames", &self.frames())
            .field("consumed", &self.consumed())
            .field("buffered", &self.buffered())
            .finish()
    }
}

/// What needs no knowledge of the message type.
impl<M> MessageDecoder<M> {
    /// Append the next bytes received, however they were cut; decode them with
    /// [`MessageDecoder::next_message`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.frames.push(bytes);
    }

    /// Frames decoded so far.
    pub fn frames(&self) -> u64 {
        self.frames.frames()
    }

    /// Bytes consumed so far (header included).
    pub fn consumed(&self) -> u64 {
        self.frames.consumed()
    }

    /// Bytes pushed but not consumed yet (a partial frame, or frames not pulled yet): what
    /// a reader bounding its buffer should count.
    pub fn buffered(&self) -> usize {
        self.frames.buffered()
    }

    /// At end of stream: an error if it ended inside the header or a frame. (Call after
    /// `next_message` has returned `Ok(None)`; complete frames not pulled yet count as
    /// "inside a frame" too.)
    pub fn finish(&self) -> Result<(), ChannelError> {
        Ok(self.frames.finish()?)
    }
}

impl<M: DeserializeOwned> MessageDecoder<M> {
    /// A decoder expecting the stream header first.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. Checks the stream
    /// header first.
    pub fn next_message(&mut self) -> Result<Option<M>, ChannelError> {
        self.frames.next(|f| {
            decode_exact(f.payload).map_err(|reason| ChannelError::Payload {
                frame: f.number,
                offset: f.offset,
                reason,
            })
        })
    }
}

#[cfg(test)]
impl<M> MessageDecoder<M> {
    /// Bytes held, consumed or not (to check the buffer stays compact).
    pub(crate) fn buffer_len(&self) -> usize {
        self.frames.buffer_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simnet::Rng;

    fn page(gpa: u64, fill: u8) -> Page {
        Page {
            gpa,
            data: vec![fill; 4096],
        }
    }

    fn to_backup() -> Vec<ToBackup> {
        vec![
            ToBackup::Hello {
                vm_name: "kv".into(),
                epoch: 7,
                mem_mib: 256,
                console_offset: 12345,
            },
            ToBackup::Pages(PageSet::Raw(vec![page(0x1000, 1), page(0x2000, 2)])),
            ToBackup::Pages(PageSet::Raw(vec![])),
            ToBackup::Machine {
                ordinal: 99,
                state: vec![9; 700],
            },
            ToBackup::Log(crate::encode_header()),
            ToBackup::Log(vec![]),
            ToBackup::Heartbeat,
        ]
    }

    fn to_primary() -> Vec<ToPrimary> {
        vec![
            ToPrimary::Hello {
                vm_name: "kv".into(),
            },
            ToPrimary::Ack { ordinal: 0 },
            ToPrimary::Ack { ordinal: u64::MAX },
            ToPrimary::Heartbeat,
        ]
    }

    fn stream<M: Serialize>(ms: &[M]) -> Vec<u8> {
        let mut s = encode_channel_header();
        for m in ms {
            s.extend(encode_message(m));
        }
        s
    }

    /// Message boundaries: the end of the header and of every frame.
    fn boundaries<M: Serialize>(ms: &[M]) -> Vec<usize> {
        let mut ends = vec![CHANNEL_HEADER_LEN];
        let mut b = CHANNEL_HEADER_LEN;
        for m in ms {
            b += encode_message(m).len();
            ends.push(b);
        }
        ends
    }

    fn decode_all<M: DeserializeOwned>(bytes: &[u8], chunk: usize) -> Result<Vec<M>, ChannelError> {
        let mut d = MessageDecoder::<M>::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk.max(1)) {
            d.push(c);
            while let Some(m) = d.next_message()? {
                out.push(m);
            }
        }
        d.finish()?;
        assert_eq!(d.consumed(), bytes.len() as u64);
        assert_eq!(d.frames(), out.len() as u64);
        Ok(out)
    }

    #[test]
    fn round_trips_both_directions_in_any_chunking() {
        let b = to_backup();
        let bytes = stream(&b);
        for chunk in [1, 3, 8, 13, 4096, bytes.len()] {
            assert_eq!(decode_all::<ToBackup>(&bytes, chunk).unwrap(), b);
        }
        let p = to_primary();
        let bytes = stream(&p);
        for chunk in [1, 5, bytes.len()] {
            assert_eq!(decode_all::<ToPrimary>(&bytes, chunk).unwrap(), p);
        }
        // A stream with only a header is a complete, empty stream.
        assert_eq!(
            decode_all::<ToPrimary>(&encode_channel_header(), 1),
            Ok(vec![])
        );
    }

    #[test]
    fn frame_layout_is_as_documented() {
        let f = encode_message(&ToPrimary::Heartbeat);
        let payload =
            bincode::serde::encode_to_vec(ToPrimary::Heartbeat, bincode::config::standard())
                .unwrap();
        assert_eq!(f[..4], (payload.len() as u32).to_le_bytes());
        assert_eq!(f[4..8], crc32fast::hash(&payload).to_le_bytes());
        assert_eq!(f[8..], payload[..]);
        assert_eq!(encode_channel_header(), b"FTVMCHN\0\x02\0\0\0");
    }

    #[test]
    fn batching_helpers_match_owned_messages() {
        let mut rng = Rng::new(5);
        let log: Vec<u8> = (0..MAX_LOG_CHUNK * 2 + 17)
            .map(|_| rng.next() as u8)
            .collect();
        let mut owned = Vec::new();
        for c in log.chunks(MAX_LOG_CHUNK) {
            owned.extend(encode_message(&ToBackup::Log(c.to_vec())));
        }
        assert_eq!(encode_log_messages(&log), owned);
        assert!(encode_log_messages(&[]).is_empty());

        let pages: Vec<Page> = (0..MAX_PAGES_PER_MESSAGE as u64 + 3)
            .map(|i| page(i << 12, i as u8))
            .collect();
        let mut owned = Vec::new();
        for c in pages.chunks(MAX_PAGES_PER_MESSAGE) {
            owned.extend(encode_message(&ToBackup::Pages(PageSet::Raw(c.to_vec()))));
        }
        let batched = encode_pages_messages(&pages);
        assert_eq!(batched, owned);
        let mut s = encode_channel_header();
        s.extend(batched);
        let got = decode_all::<ToBackup>(&s, 1 << 16).unwrap();
        assert_eq!(got.len(), 2);
        // A full batch of 4 KiB pages fits the limit with room to spare.
        assert!(owned.len() < MAX_MESSAGE / 8);

        // The borrowed mirror's other variants line up with the owned ones too.
        assert_eq!(
            encode_message(&ToBackupRef::Hello {
                vm_name: "a",
                epoch: 1,
                mem_mib: 2,
                console_offset: 3
            }),
            encode_message(&ToBackup::Hello {
                vm_name: "a".into(),
                epoch: 1,
                mem_mib: 2,
                console_offset: 3
            })
        );
        assert_eq!(
            encode_message(&ToBackupRef::Machine {
                ordinal: 4,
                state: &[5, 6]
            }),
            encode_message(&ToBackup::Machine {
                ordinal: 4,
                state: vec![5, 6]
            })
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = stream(&to_backup());
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x10, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                if let Ok(got) = decode_all::<ToBackup>(&b, 777) {
                    panic!("flip at byte {i} undetected: {got:?}");
                }
            }
        }
    }

    #[test]
    fn corruption_names_the_frame_and_offset() {
        let ms = to_backup();
        let mut bytes = stream(&ms);
        let ends = boundaries(&ms);
        // The Machine message is frame 3.
        let off = ends[3];
        bytes[off + MESSAGE_HEADER_LEN + 5] ^= 0x40;
        let mut d = MessageDecoder::<ToBackup>::new();
        d.push(&bytes);
        for m in &ms[..3] {
            assert_eq!(d.next_message().unwrap().as_ref(), Some(m));
        }
        let err = d.next_message().unwrap_err();
        assert!(
            matches!(err, ChannelError::Checksum { frame: 3, offset, .. } if offset == off as u64),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("frame 3 at byte {off}")),
            "{err}"
        );
        // The error is sticky: nothing after the damage is ever yielded.
        assert_eq!(d.next_message().unwrap_err(), err);
        assert_eq!(d.frames(), 3);
    }

    #[test]
    fn truncation_is_reported_at_every_length() {
        let ms = to_backup();
        let bytes = stream(&ms);
        let ends = boundaries(&ms);
        for cut in 0..bytes.len() {
            let mut d = MessageDecoder::<ToBackup>::new();
            d.push(&bytes[..cut]);
            let mut got = Vec::new();
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            // Whatever was complete came out, in order.
            let complete = ends.iter().filter(|&&e| e <= cut).count().saturating_sub(1);
            assert_eq!(got, ms[..complete], "cut at {cut}");
            match d.finish() {
                Ok(()) => assert!(ends.contains(&cut), "cut at {cut} unreported"),
                Err(ChannelError::TruncatedHeader { have }) => {
                    assert!(cut < CHANNEL_HEADER_LEN);
                    assert_eq!(have, cut);
                }
                Err(ChannelError::Truncated {
                    frame,
                    offset,
                    have,
                    need,
                }) => {
                    assert!(!ends.contains(&cut));
                    assert_eq!(frame, complete as u64);
                    assert_eq!(offset, ends[complete] as u64);
                    assert_eq!(have, cut - ends[complete]);
                    if have >= 4 {
                        assert_eq!(need, ends[complete + 1] - ends[complete]);
                    }
                }
                Err(e) => panic!("cut at {cut}: {e:?}"),
            }
        }
    }

    #[test]
    fn header_is_checked() {
        assert_eq!(
            decode_all::<ToBackup>(b"FTVMLOG\0\x01\0\0\0", 100),
            Err(ChannelError::BadMagic)
        );
        // A wrong peer is refused from its first differing byte, not after 12.
        let mut d = MessageDecoder::<ToBackup>::new();
        d.push(b"GET ");
        assert_eq!(d.next_message(), Err(ChannelError::BadMagic));
        let mut h = encode_channel_header();
        h[8] = 1;
        assert_eq!(
            decode_all::<ToBackup>(&h, 1),
            Err(ChannelError::Version { found: 1 })
        );
        let mut d = MessageDecoder::<ToBackup>::new();
        d.push(&encode_channel_header()[..5]);
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(d.finish(), Err(ChannelError::TruncatedHeader { have: 5 }));
        let d = MessageDecoder::<ToBackup>::new();
        assert_eq!(d.finish(), Err(ChannelError::TruncatedHeader { have: 0 }));
    }

    #[test]
    fn huge_length_is_refused_before_allocating() {
        for len in [u32::MAX, MAX_MESSAGE as u32 + 1] {
            let mut bytes = encode_channel_header();
            bytes.extend(encode_message(&ToBackup::Heartbeat));
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            let r = decode_all::<ToBackup>(&bytes, 100);
            assert_eq!(
                r,
                Err(ChannelError::TooLarge {
                    frame: 1,
                    offset: (CHANNEL_HEADER_LEN + 9) as u64,
                    len: len as usize
                })
            );
        }
        // Exactly the limit is a length the decoder waits for, not an error.
        let mut d = MessageDecoder::<ToBackup>::new();
        d.push(&encode_channel_header());
        d.push(&(MAX_MESSAGE as u32).to_le_bytes());
        d.push(&[0; 4]);
        assert_eq!(d.next_message(), Ok(None));
        assert!(
            matches!(d.finish(), Err(ChannelError::Truncated { need, .. }) if need == MAX_MESSAGE + 8)
        );
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = encode_channel_header();
        frame(payload, &mut bytes);
        bytes
    }

    #[test]
    fn garbage_with_a_valid_checksum_is_a_payload_error() {
        // A hostile or buggy peer can make the checksum match; decoding must still fail
        // cleanly, including for length prefixes inside the payload that claim gigabytes.
        for payload in [
            vec![],
            vec![0xffu8; 40],
            vec![9],                                                       // no such variant
            vec![1, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f], // Pages of 2^60
            vec![3, 0xfc, 0xff, 0xff, 0xff, 0x7f],                         // Log of 2 GiB
            vec![0, 0xfc, 0x00, 0x00, 0x00, 0x40],                         // a 1 GiB vm_name
            vec![0, 2, 0xff, 0xfe, 0, 0, 0],                               // vm_name not UTF-8
            vec![4, 0], // Heartbeat with a trailing byte
        ] {
            let r = decode_all::<ToBackup>(&framed(&payload), 100);
            assert!(
                matches!(
                    r,
                    Err(ChannelError::Payload {
                        frame: 0,
                        offset: 12,
                        ..
                    })
                ),
                "{payload:?}: {r:?}"
            );
        }
        let r = decode_all::<ToPrimary>(&framed(&[4, 0]), 100);
        assert!(matches!(r, Err(ChannelError::Payload { .. })), "{r:?}");
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng::new(1);
        for round in 0..2000 {
            let n = rng.below(300) as usize;
            let mut bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            // Half the time behind a valid header, so the frame parser sees the garbage;
            // sometimes with a plausible length, sometimes with a matching checksum.
            if round % 2 == 0 {
                let mut s = encode_channel_header();
                match round % 8 {
                    0 => {
                        let len = bytes.len() as u32;
                        s.extend_from_slice(&len.to_le_bytes());
                        s.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
                    }
                    2 => s.extend_from_slice(&(rng.next() as u32 | 0x8000_0000).to_le_bytes()),
                    _ => {}
                }
                s.extend(bytes);
                bytes = s;
            }
            let chunk = 1 + rng.below(64) as usize;
            let _ = decode_all::<ToBackup>(&bytes, chunk);
            let _ = decode_all::<ToPrimary>(&bytes, chunk);
        }
    }

    #[test]
    fn buffer_stays_compact() {
        let one = encode_message(&ToBackup::Log(vec![7; 100]));
        let mut d = MessageDecoder::<ToBackup>::new();
        d.push(&encode_channel_header());
        let mut max = 0;
        for i in 0..10_000 {
            // Feed in two uneven pieces so a partial frame is often pending.
            let cut = i % one.len();
            d.push(&one[..cut]);
            while d.next_message().unwrap().is_some() {}
            d.push(&one[cut..]);
            while d.next_message().unwrap().is_some() {}
            max = max.max(d.buffer_len());
        }
        assert_eq!(d.frames(), 10_000);
        assert!(max <= 4 * one.len(), "buffer grew to {max}");
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn oversized_message_is_refused_by_the_peer() {
        // The encoder does not police MAX_MESSAGE; the decoder does.
        let bytes = {
            let mut s = encode_channel_header();
            s.extend(encode_message(&ToBackup::Log(vec![0; MAX_MESSAGE])));
            s
        };
        let r = decode_all::<ToBackup>(&bytes, 1 << 20);
        assert!(
            matches!(r, Err(ChannelError::TooLarge { frame: 0, .. })),
            "{r:?}"
        );
    }
}
