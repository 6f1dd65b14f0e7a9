//! The log's byte format.
//!
//! A stream starts with a 12-byte header: the magic `FTVMLOG\0` and the format version
//! (u32 LE). Then frames, each:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | payload length (u32 LE) |
//! | 1 | entry kind |
//! | 4 | CRC32 of the kind byte and the payload |
//! | n | payload: the entry, bincode (standard config) |
//!
//! The decoder is incremental (feed it bytes as they arrive), bounds every length before
//! allocating, and reports damage with the number of the frame and its byte offset. The
//! framing (header, length, CRC) is read by the `frame` module, which the logging channel
//! ([`crate::channel`]) shares; this module adds the entry kind and the payload.

use crate::entry::Entry;
use crate::frame::{decode_exact, frame_error_into, Format, FrameReader};

/// The first 8 bytes of every log stream.
pub const MAGIC: &[u8; 8] = b"FTVMLOG\0";
/// The format version this crate writes and reads, stored after [`MAGIC`].
///
/// 2: checkpoint pages as a [`crate::pages::PageSet`].
pub const FORMAT_VERSION: u32 = 2;
/// Bytes of the stream header: magic and version.
pub const HEADER_LEN: usize = crate::frame::STREAM_HEADER_LEN;
/// Bytes before each frame's payload: length, entry kind and CRC32.
pub const FRAME_HEADER_LEN: usize = FORMAT.frame_header_len();
/// Largest payload accepted: a full checkpoint of up to 1 GiB of non-zero guest memory,
/// plus its framing. Anything longer is damage (or an attack), refused before allocating.
pub const MAX_PAYLOAD: usize = (1 << 30) + (4 << 20);

/// Why a log stream could not be decoded. Frame numbers count from 0; offsets are bytes
/// from the start of the stream, header included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The stream does not start with [`MAGIC`].
    #[error("not an ftvm log (bad magic)")]
    BadMagic,
    /// The stream is in a format version this build does not read.
    #[error("log format version {found}; this ftvm reads version {FORMAT_VERSION}")]
    Version {
        /// The version in the stream header.
        found: u32,
    },
    /// A frame claims a payload longer than [`MAX_PAYLOAD`]; refused before allocating.
    #[error(
        "frame {frame} at byte {offset}: length {len} exceeds the limit of {MAX_PAYLOAD} bytes"
    )]
    TooLarge {
        /// Number of the frame.
        frame: u64,
        /// Stream offset where the frame starts.
        offset: u64,
        /// Payload length the frame claims, in bytes.
        len: usize,
    },
    /// A frame's stored CRC32 does not match its kind byte and payload.
    #[error("frame {frame} at byte {offset} ({kind}): checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// Number of the frame.
        frame: u64,
        /// Stream offset where the frame starts.
        offset: u64,
        /// The entry kind the frame header claims (it may be damaged too).
        kind: &'static str,
        /// CRC32 stored in the frame header.
        stored: u32,
        /// CRC32 computed over what was read.
        computed: u32,
    },
    /// A frame's checksum matched but its payload is not a valid entry.
    #[error("frame {frame} at byte {offset} ({kind}): undecodable payload: {reason}")]
    Payload {
        /// Number of the frame.
        frame: u64,
        /// Stream offset where the frame starts.
        offset: u64,
        /// The entry kind the frame header claims.
        kind: &'static str,
        /// What the deserializer objected to.
        reason: String,
    },
    /// A frame's header kind byte and the entry in its payload disagree.
    #[error("frame {frame} at byte {offset}: header says {header_kind} but the payload is {payload_kind}")]
    KindMismatch {
        /// Number of the frame.
        frame: u64,
        /// Stream offset where the frame starts.
        offset: u64,
        /// The entry kind the frame header claims.
        header_kind: &'static str,
        /// The kind of the entry actually decoded.
        payload_kind: &'static str,
    },
    /// The input ended partway through a frame.
    #[error("log ends inside frame {frame} at byte {offset} ({have} of {need} bytes)")]
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
    /// The input ended before the whole stream header arrived.
    #[error("log ends inside its header ({have} of {HEADER_LEN} bytes)")]
    TruncatedHeader {
        /// Bytes of the header that arrived.
        have: usize,
    },
}

static FORMAT: Format = Format {
    magic: MAGIC,
    version: FORMAT_VERSION,
    tag_len: 1,
    max_payload: MAX_PAYLOAD,
};

// A checksum error names the kind the (damaged) frame claims to be.
frame_error_into!(CodecError, |tag| { kind: Entry::kind_name(tag) });

/// The stream header.
pub fn encode_header() -> Vec<u8> {
    FORMAT.header()
}

/// One frame for `entry`.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail; an entry over the limit is a VMM bug
    // caught by the decoder on the other side, so encode without the limit here.
    let payload =
        bincode::serde::encode_to_vec(entry, bincode::config::standard()).unwrap_or_default();
    let kind = entry.kind();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&payload);
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(&hasher.finalize().to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Incremental decoder: push bytes, pull entries.
#[derive(Debug)]
pub struct Decoder {
    frames: FrameReader,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            frames: FrameReader::new(&FORMAT),
        }
    }
}

impl Decoder {
    /// A decoder expecting the stream header first.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append the next bytes of the stream, however they were cut; decode them with
    /// [`Decoder::next_entry`].
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

    /// The next complete entry, `Ok(None)` if more bytes are needed.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, CodecError> {
        self.frames.next(|f| {
            let kind = Entry::kind_name(f.tag);
            let entry: Entry = decode_exact(f.payload).map_err(|reason| CodecError::Payload {
                frame: f.number,
                offset: f.offset,
                kind,
                reason,
            })?;
            if entry.kind() != f.tag {
                return Err(CodecError::KindMismatch {
                    frame: f.number,
                    offset: f.offset,
                    header_kind: kind,
                    payload_kind: Entry::kind_name(entry.kind()),
                });
            }
            Ok(entry)
        })
    }

    /// At end of input: an error if a frame (or the header) was cut short.
    pub fn finish(&self) -> Result<(), CodecError> {
        Ok(self.frames.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Exit(ExitRecord {
                ordinal: 1,
                time_ns: 1000,
                kind: ExitKind::PioOut,
                rip: 0x100010,
                addr: 0x3f8,
                size: 1,
                value: b'h' as u64,
            }),
            Entry::SerialInput {
                ordinal: 1,
                bytes: b"ls\n".to_vec(),
            },
            Entry::Interrupt {
                ordinal: 1,
                vector: 0x20,
            },
            Entry::TimeSample {
                ordinal: 2,
                time_ns: 5_000_000,
            },
            Entry::Delta(Box::new(Delta {
                ordinal: 2,
                time_ns: 6_000_000,
                full: false,
                state_encoding: Default::default(),
                vcpu: vec![1, 2, 3],
                devices: vec![4, 5],
                pages: crate::pages::PageSet::Raw(vec![Page {
                    gpa: 0x1000,
                    data: vec![7; 4096],
                }]),
            })),
            Entry::Delta(Box::new(Delta {
                ordinal: 3,
                time_ns: 7_000_000,
                full: true,
                state_encoding: Default::default(),
                vcpu: vec![1, 2, 3],
                devices: vec![4, 5],
                pages: xor_pages(),
            })),
            Entry::Point(Box::new(crate::EventPoint {
                ordinal: 3,
                time_ns: 7_500_000,
                rip: 0xffff_ffff_8100_1234,
                rflags: 0x246,
                gprs: [
                    u64::MAX,
                    0,
                    7,
                    1 << 40,
                    5,
                    6,
                    0xffff_c900_0001_0000,
                    8,
                    9,
                    10,
                    11,
                    12,
                    13,
                    14,
                    15,
                    16,
                ],
                branches: None,
            })),
            Entry::HeldOutput {
                ordinal: 3,
                position: 1234,
                bytes: b"held\n".to_vec(),
            },
            Entry::BootSeed { seed: [0x5a; 32] },
            Entry::Shutdown {
                ordinal: 3,
                reason: "power off".into(),
                digest: Digest {
                    memory_crc32: 1,
                    vcpu_crc32: 2,
                    devices_crc32: 3,
                },
            },
        ]
    }

    /// Pages as the page codec encodes them: one changed a little, one zeroed.
    fn xor_pages() -> crate::pages::PageSet {
        use crate::pages::{Listing, PageEncoder, PageEncoding};
        let mut enc = PageEncoder::new(PageEncoding::XorLz4, vec![(0, 1 << 20)]);
        enc.seed(0x1000, &[7; 4096]).unwrap();
        enc.seed(0x2000, &[8; 4096]).unwrap();
        let mut changed = vec![7; 4096];
        changed[10] = 1;
        let mut b = enc.batch(Listing::Dirty);
        b.push(0x1000, &changed).unwrap();
        b.push(0x2000, &[0; 4096]).unwrap();
        b.finish().unwrap()
    }

    fn stream(entries: &[Entry]) -> Vec<u8> {
        let mut s = encode_header();
        for e in entries {
            s.extend(encode_entry(e));
        }
        s
    }

    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Entry>, CodecError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk.max(1)) {
            d.push(c);
            while let Some(e) = d.next_entry()? {
                out.push(e);
            }
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trips_whole_and_byte_by_byte() {
        let entries = sample();
        let bytes = stream(&entries);
        assert_eq!(decode_all(&bytes, bytes.len()).unwrap(), entries);
        assert_eq!(decode_all(&bytes, 1).unwrap(), entries);
        assert_eq!(decode_all(&bytes, 7).unwrap(), entries);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = stream(&sample());
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                match decode_all(&b, 64) {
                    Err(_) => {}
                    Ok(got) => panic!("flip at byte {i} undetected: {got:?}"),
                }
            }
        }
    }

    #[test]
    fn corruption_names_the_frame() {
        let entries = sample();
        let mut bytes = stream(&entries);
        // Corrupt the payload of the third frame (the interrupt).
        let mut off = HEADER_LEN;
        for e in &entries[..2] {
            off += encode_entry(e).len();
        }
        bytes[off + FRAME_HEADER_LEN] ^= 0xff;
        let err = decode_all(&bytes, 100).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Checksum {
                    frame: 2,
                    kind: "interrupt",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!("frame 2 at byte {off}")),
            "{err}"
        );
    }

    #[test]
    fn truncation_is_reported_at_every_length() {
        let bytes = stream(&sample());
        for cut in 0..bytes.len() {
            let r = decode_all(&bytes[..cut], 13);
            let at_boundary = {
                let mut b = HEADER_LEN;
                let mut ends = vec![HEADER_LEN];
                for e in sample() {
                    b += encode_entry(&e).len();
                    ends.push(b);
                }
                ends.contains(&cut)
            };
            assert_eq!(r.is_ok(), at_boundary, "cut at {cut}: {r:?}");
        }
    }

    #[test]
    fn header_is_checked() {
        assert_eq!(
            decode_all(b"NOTALOG\0\x01\0\0\0", 100),
            Err(CodecError::BadMagic)
        );
        let mut h = encode_header();
        h[8] = 9;
        assert_eq!(decode_all(&h, 100), Err(CodecError::Version { found: 9 }));
    }

    #[test]
    fn huge_length_is_refused_before_allocating() {
        let mut bytes = encode_header();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[1, 0, 0, 0, 0]);
        assert!(matches!(
            decode_all(&bytes, 100),
            Err(CodecError::TooLarge { frame: 0, .. })
        ));
    }

    #[test]
    fn garbage_with_a_valid_checksum_is_a_payload_error() {
        // A hostile or buggy peer can make the checksum match; decoding must still fail
        // cleanly, including for length prefixes inside the payload that claim gigabytes.
        let mut bytes = encode_header();
        for payload in [
            vec![0xffu8; 40],
            vec![4, 0xff, 0xff, 0xff, 0xff, 0x0f],
            vec![],
        ] {
            let kind = 3u8;
            let mut h = crc32fast::Hasher::new();
            h.update(&[kind]);
            h.update(&payload);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.push(kind);
            bytes.extend_from_slice(&h.finalize().to_le_bytes());
            bytes.extend_from_slice(&payload);
            let r = decode_all(&bytes, 100);
            assert!(matches!(r, Err(CodecError::Payload { .. })), "{r:?}");
            bytes.truncate(HEADER_LEN);
        }
    }
}
