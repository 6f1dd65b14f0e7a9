//! The framing that the log ([`crate::codec`]) and the logging channel ([`crate::channel`])
//! share: a 12-byte stream header (an 8-byte magic and a u32 LE version), then frames of
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | payload length (u32 LE) |
//! | 0 or 1 | tag (the log's entry kind; the channel has none) |
//! | 4 | CRC32 of the tag and the payload (u32 LE) |
//! | n | payload |
//!
//! [`FrameReader`] reads them incrementally: it checks the header, bounds the length
//! before waiting for (or allocating) the payload, checks the CRC, and hands the payload
//! to the stream's own decoder. It never advances past a frame that failed, so an error
//! is sticky. Each stream turns a [`FrameError`] into its own error, with its own words.

use serde::de::DeserializeOwned;

pub(crate) const STREAM_HEADER_LEN: usize = 12;

/// What tells one stream's frames from another's.
#[derive(Debug)]
pub(crate) struct Format {
    pub magic: &'static [u8; 8],
    pub version: u32,
    /// Tag bytes between the length and the CRC: 1 for the log's kind, 0 for the channel.
    pub tag_len: usize,
    /// Longest payload accepted; a longer length is refused before anything is allocated.
    pub max_payload: usize,
}

impl Format {
    /// Length, tag and CRC.
    pub const fn frame_header_len(&self) -> usize {
        4 + self.tag_len + 4
    }

    /// The stream header.
    pub fn header(&self) -> Vec<u8> {
        let mut v = self.magic.to_vec();
        v.extend_from_slice(&self.version.to_le_bytes());
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("bad magic")]
    BadMagic,
    #[error("stream format version {found}")]
    Version { found: u32 },
    #[error("frame {frame} at byte {offset}: length {len} exceeds the limit")]
    TooLarge { frame: u64, offset: u64, len: usize },
    #[error("frame {frame} at byte {offset} (tag {tag}): checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        frame: u64,
        offset: u64,
        /// 0 for a format without tags.
        tag: u8,
        stored: u32,
        computed: u32,
    },
    #[error("stream ends inside frame {frame} at byte {offset} ({have} of {need} bytes)")]
    Truncated {
        frame: u64,
        offset: u64,
        have: usize,
        need: usize,
    },
    #[error("stream ends inside its header ({have} of {STREAM_HEADER_LEN} bytes)")]
    TruncatedHeader { have: usize },
}

/// `From<FrameError>` for a stream's error enum, which has a variant of the same name and
/// fields for each of [`FrameError`]'s but `Checksum`: there the tag is turned into the
/// stream's own fields (none for an untagged format), e.g.
/// `frame_error_into!(CodecError, |tag| { kind: Entry::kind_name(tag) });`.
macro_rules! frame_error_into {
    ($error:ty, |$tag:pat_param| { $($checksum_field:ident: $value:expr),* }) => {
        impl From<$crate::frame::FrameError> for $error {
            fn from(e: $crate::frame::FrameError) -> Self {
                use $crate::frame::FrameError as F;
                match e {
                    F::BadMagic => Self::BadMagic,
                    F::Version { found } => Self::Version { found },
                    F::TooLarge { frame, offset, len } => Self::TooLarge { frame, offset, len },
                    F::Checksum { frame, offset, tag: $tag, stored, computed } => Self::Checksum {
                        frame,
                        offset,
                        $($checksum_field: $value,)*
                        stored,
                        computed,
                    },
                    F::Truncated { frame, offset, have, need } => {
                        Self::Truncated { frame, offset, have, need }
                    }
                    F::TruncatedHeader { have } => Self::TruncatedHeader { have },
                }
            }
        }
    };
}
pub(crate) use frame_error_into;

/// One whole frame whose CRC matched.
pub(crate) struct Frame<'a> {
    /// Frames before it in the stream.
    pub number: u64,
    /// Stream byte offset of its first byte.
    pub offset: u64,
    /// 0 for a format without tags.
    pub tag: u8,
    pub payload: &'a [u8],
}

/// Push bytes, pull frames.
#[derive(Debug)]
pub(crate) struct FrameReader {
    format: &'static Format,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    header_done: bool,
    frames: u64,
    /// Stream offset of buf[0].
    base: u64,
}

impl FrameReader {
    pub fn new(format: &'static Format) -> Self {
        Self {
            format,
            buf: Vec::new(),
            pos: 0,
            header_done: false,
            frames: 0,
            base: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Drop consumed bytes once they are at least half the buffer, so the buffer stays
        // within about twice what is pending and the copying stays amortised O(1) a byte.
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Frames decoded so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes consumed so far (header included).
    pub fn consumed(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes pushed but not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn header_done(&self) -> bool {
        self.header_done
    }

    /// Bytes held, consumed or not.
    #[cfg(test)]
    pub fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Check the stream header once it is all there; `Ok(false)` while it is not.
    fn header(&mut self) -> Result<bool, FrameError> {
        if self.header_done {
            return Ok(true);
        }
        let f = self.format;
        let a = self.avail();
        if a.len() < STREAM_HEADER_LEN {
            // Refuse a wrong peer as soon as its first bytes show it.
            if !f.magic.starts_with(&a[..a.len().min(f.magic.len())]) {
                return Err(FrameError::BadMagic);
            }
            return Ok(false);
        }
        if &a[..8] != f.magic {
            return Err(FrameError::BadMagic);
        }
        let found = u32::from_le_bytes([a[8], a[9], a[10], a[11]]);
        if found != f.version {
            return Err(FrameError::Version { found });
        }
        self.pos += STREAM_HEADER_LEN;
        self.header_done = true;
        Ok(true)
    }

    /// The next complete frame through `decode`, `Ok(None)` if more bytes are needed. The
    /// frame counts as consumed only if `decode` accepts it, so that an undecodable frame
    /// is reported again rather than skipped.
    pub fn next<T, E: From<FrameError>>(
        &mut self,
        decode: impl FnOnce(Frame<'_>) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        if !self.header()? {
            return Ok(None);
        }
        let f = self.format;
        let head = f.frame_header_len();
        let offset = self.consumed();
        let frame = self.frames;
        let a = self.avail();
        if a.len() < head {
            return Ok(None);
        }
        let len = u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as usize;
        if len > f.max_payload {
            return Err(FrameError::TooLarge { frame, offset, len }.into());
        }
        if a.len() < head + len {
            return Ok(None);
        }
        let tag_bytes = &a[4..4 + f.tag_len];
        let tag = tag_bytes.first().copied().unwrap_or(0);
        let c = 4 + f.tag_len;
        let stored = u32::from_le_bytes([a[c], a[c + 1], a[c + 2], a[c + 3]]);
        let payload = &a[head..head + len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(tag_bytes);
        hasher.update(payload);
        let computed = hasher.finalize();
        if computed != stored {
            return Err(FrameError::Checksum {
                frame,
                offset,
                tag,
                stored,
                computed,
            }
            .into());
        }
        let value = decode(Frame {
            number: frame,
            offset,
            tag,
            payload,
        })?;
        self.pos += head + len;
        self.frames += 1;
        Ok(Some(value))
    }

    /// At end of input: an error if the stream ended inside the header or a frame.
    /// (Complete frames not pulled yet count as "inside a frame" too.)
    pub fn finish(&self) -> Result<(), FrameError> {
        let a = self.avail();
        if !self.header_done {
            return Err(FrameError::TruncatedHeader { have: a.len() });
        }
        if a.is_empty() {
            return Ok(());
        }
        let head = self.format.frame_header_len();
        let need = if a.len() >= 4 {
            head + u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as usize
        } else {
            head
        };
        Err(FrameError::Truncated {
            frame: self.frames,
            offset: self.consumed(),
            have: a.len(),
            need,
        })
    }
}

/// In-memory bytes a decoded value may claim per encoded byte: a one-byte varint can stand
/// for a `u64` (8 bytes), a one-byte length for a `Vec` header (24 bytes), a page for
/// its 32-byte `Page` header; 32 covers every type of the log and the channel.
const CLAIM_FACTOR: usize = 32;

/// Decode a whole payload as one `T`: bytes left over are as much damage as bytes missing.
/// The error is the reason, for the stream's own payload error.
///
/// What decoding may allocate is bounded by the payload that actually arrived, not by the
/// lengths written inside it: bincode checks each claimed length against its limit before
/// allocating, and the limit here is the smallest of a few sizes that covers
/// `CLAIM_FACTOR` times the payload (a 10-byte frame claiming a 64 MiB vector is refused
/// at the claim).
pub(crate) fn decode_exact<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    fn with<T: DeserializeOwned>(
        payload: &[u8],
        config: impl bincode::config::Config,
    ) -> Result<T, String> {
        let (value, used): (T, usize) =
            bincode::serde::decode_from_slice(payload, config).map_err(|e| e.to_string())?;
        if used != payload.len() {
            return Err(format!("{} trailing bytes", payload.len() - used));
        }
        Ok(value)
    }
    let c = bincode::config::standard();
    let budget = payload
        .len()
        .saturating_mul(CLAIM_FACTOR)
        .saturating_add(4096);
    match budget {
        0..=0x1_0000 => with(payload, c.with_limit::<0x1_0000>()),
        0x1_0001..=0x10_0000 => with(payload, c.with_limit::<0x10_0000>()),
        0x10_0001..=0x100_0000 => with(payload, c.with_limit::<0x100_0000>()),
        0x100_0001..=0x1000_0000 => with(payload, c.with_limit::<0x1000_0000>()),
        // Payloads are at most the log's MAX_PAYLOAD (about 1 GiB), checked by the frame
        // reader before this runs.
        _ => with(payload, c.with_limit::<{ 1 << 36 }>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAGGED: Format = Format {
        magic: b"TESTFMT\0",
        version: 3,
        tag_len: 1,
        max_payload: 16,
    };

    const PLAIN: Format = Format {
        tag_len: 0,
        ..TAGGED
    };

    fn frame(format: &Format, tag: u8, payload: &[u8]) -> Vec<u8> {
        let tag = &[tag][..format.tag_len];
        let mut h = crc32fast::Hasher::new();
        h.update(tag);
        h.update(payload);
        let mut v = (payload.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(tag);
        v.extend_from_slice(&h.finalize().to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn raw(f: Frame<'_>) -> Result<(u64, u64, u8, Vec<u8>), FrameError> {
        Ok((f.number, f.offset, f.tag, f.payload.to_vec()))
    }

    #[test]
    fn reads_tagged_and_untagged_frames() {
        for format in [&TAGGED, &PLAIN] {
            let mut s = format.header();
            s.extend(frame(format, 7, b"abc"));
            s.extend(frame(format, 9, b""));
            let mut r = FrameReader::new(format);
            r.push(&s);
            let tag = |t| if format.tag_len == 1 { t } else { 0 };
            let second = (STREAM_HEADER_LEN + format.frame_header_len() + 3) as u64;
            assert_eq!(r.next(raw), Ok(Some((0, 12, tag(7), b"abc".to_vec()))));
            assert_eq!(r.next(raw), Ok(Some((1, second, tag(9), vec![]))));
            assert_eq!(r.next(raw), Ok(None));
            assert_eq!(r.finish(), Ok(()));
            assert_eq!(r.consumed(), s.len() as u64);
        }
    }

    #[test]
    fn the_tag_is_under_the_checksum() {
        let mut s = TAGGED.header();
        s.extend(frame(&TAGGED, 7, b"abc"));
        s[STREAM_HEADER_LEN + 4] = 8;
        let mut r = FrameReader::new(&TAGGED);
        r.push(&s);
        assert!(matches!(
            r.next(raw),
            Err(FrameError::Checksum {
                frame: 0,
                offset: 12,
                tag: 8,
                ..
            })
        ));
    }

    #[test]
    fn a_refused_frame_is_not_consumed() {
        let mut s = PLAIN.header();
        s.extend(frame(&PLAIN, 0, b"x"));
        let mut r = FrameReader::new(&PLAIN);
        r.push(&s);
        let refuse = |_: Frame<'_>| -> Result<(), FrameError> { Err(FrameError::BadMagic) };
        assert_eq!(r.next(refuse), Err(FrameError::BadMagic));
        assert_eq!((r.frames(), r.consumed()), (0, 12));
        assert_eq!(r.next(raw), Ok(Some((0, 12, 0, b"x".to_vec()))));
    }

    #[test]
    fn decode_exact_refuses_leftovers() {
        let c = bincode::config::standard();
        let mut bytes = bincode::serde::encode_to_vec(5u32, c).unwrap();
        assert_eq!(decode_exact::<u32>(&bytes), Ok(5));
        bytes.extend([0, 0]);
        assert_eq!(decode_exact::<u32>(&bytes), Err("2 trailing bytes".into()));
        assert!(decode_exact::<u32>(&[]).is_err());
    }

    #[test]
    fn decode_exact_refuses_lengths_the_payload_cannot_hold_before_allocating() {
        // A byte vector claiming 64 MiB in a 5-byte payload: refused at the claim (a
        // limit error), not after allocating and running out of input.
        let c = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(64u64 << 20, c).unwrap();
        let e = decode_exact::<serde_bytes::ByteBuf>(&bytes).unwrap_err();
        assert!(e.to_lowercase().contains("limit"), "{e}");
        // A real one decodes, however the sizes fall.
        for len in [0usize, 1, 4096, 70_000, 3 << 20] {
            let v = serde_bytes::ByteBuf::from(vec![7u8; len]);
            let bytes = bincode::serde::encode_to_vec(&v, c).unwrap();
            assert_eq!(decode_exact::<serde_bytes::ByteBuf>(&bytes), Ok(v));
        }
        let pages: Vec<crate::Page> = (0..300)
            .map(|i| crate::Page {
                gpa: i << 12,
                data: vec![],
            })
            .collect();
        let bytes = bincode::serde::encode_to_vec(&pages, c).unwrap();
        assert_eq!(decode_exact::<Vec<crate::Page>>(&bytes), Ok(pages));
    }
}
