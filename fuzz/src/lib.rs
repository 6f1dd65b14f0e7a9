//! Helpers shared by ftvm's fuzz targets: cutting an input into the chunks a decoder is
//! fed, reading operations off the input, and the clock and interrupt lines devices need.
//!
//! Everything here is deterministic in the input, so a crash file replays exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ftvm_devices::Clock;

/// How a stream is cut into `push` calls. Decoders read from sockets, where a frame can
/// arrive in any number of pieces; the cut points are part of what is fuzzed.
///
/// Layout of an input: byte 0 says how many size bytes follow (its value mod 8; 0 means
/// the whole stream in one push), then the size bytes, then the stream. Sizes are used in
/// turn, cycling; a size byte `b` means `b + 1` bytes, except 255, which means "all the
/// rest", so one input can mix byte-by-byte pieces with a single large one.
pub struct Chunking<'a> {
    sizes: &'a [u8],
    /// The stream to decode (the input after the chunking prefix).
    pub stream: &'a [u8],
}

impl<'a> Chunking<'a> {
    pub fn split(data: &'a [u8]) -> Self {
        let Some((&n, rest)) = data.split_first() else {
            return Self {
                sizes: &[],
                stream: &[],
            };
        };
        let n = usize::from(n % 8).min(rest.len());
        let (sizes, stream) = rest.split_at(n);
        Self { sizes, stream }
    }

    /// The stream's pieces, in order; together exactly `stream`.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = self.stream;
        let mut i = 0;
        while !rest.is_empty() {
            let take = match self.sizes.get(i % self.sizes.len().max(1)) {
                None | Some(255) => rest.len(),
                Some(&b) => usize::from(b) + 1,
            }
            .min(rest.len());
            let (piece, tail) = rest.split_at(take);
            out.push(piece);
            rest = tail;
            i += 1;
        }
        out
    }
}

/// A connection or file that delivers a stream in the input's pieces, at most one piece
/// per `read`, and (if asked) an interrupted read before each piece that starts with 0xee,
/// which `Read`'s contract says the caller retries.
///
/// It owns copies of the pieces, so it can be a `'static` source (the replayer's is).
pub struct PieceReader {
    pieces: Vec<Vec<u8>>,
    interrupts: bool,
    next: usize,
    /// Bytes of the current piece already delivered.
    used: usize,
    interrupted: bool,
}

impl PieceReader {
    pub fn new(pieces: Vec<&[u8]>, interrupts: bool) -> Self {
        Self {
            pieces: pieces.into_iter().map(<[u8]>::to_vec).collect(),
            interrupts,
            next: 0,
            used: 0,
            interrupted: false,
        }
    }
}

impl std::io::Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(piece) = self.pieces.get(self.next) else {
            return Ok(0);
        };
        if self.interrupts && !self.interrupted && piece.first() == Some(&0xee) {
            self.interrupted = true;
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let rest = &piece[self.used..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.used += n;
        if self.used == piece.len() {
            self.next += 1;
            self.used = 0;
            self.interrupted = false;
        }
        Ok(n)
    }
}

/// A frame that decoded to a value and the frame the encoder makes of that value must
/// agree. bincode accepts integers in a longer form than the one it writes (a small
/// varint spelled with a 2- or 8-byte marker), so bytes can only be compared when the
/// lengths match; a re-encoding is never longer than what was read, because the encoder
/// always writes the shortest form.
pub fn assert_reencodes(read: &[u8], reencoded: &[u8], what: &str) {
    assert!(
        reencoded.len() <= read.len(),
        "{what}: re-encoding is longer ({} bytes) than the frame read ({} bytes)",
        reencoded.len(),
        read.len()
    );
    if reencoded.len() == read.len() {
        assert_eq!(read, reencoded, "{what}: re-encoding differs");
    }
}

/// Reads fixed-size values off the input; zeros once it runs out, so every input is a
/// complete (if short) script.
pub struct Ops<'a> {
    data: &'a [u8],
}

impl<'a> Ops<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (b, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        b
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Virtual time the fuzz input moves by hand (devices never read host time).
#[derive(Default)]
pub struct FuzzClock(AtomicU64);

impl FuzzClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Time only moves forward, as the VMM's clocks do; it saturates at the end of the range.
    pub fn advance(&self, ns: u64) {
        let now = self.0.load(Ordering::SeqCst);
        self.0.store(now.saturating_add(ns), Ordering::SeqCst);
    }
}

impl Clock for FuzzClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the log decoder and the channel's message decoders share: bytes in, items out,
/// errors final. One driver ([`check_stream`]) checks them all the same way.
pub trait StreamDecoder {
    type Item;
    type Error: PartialEq + std::fmt::Debug;
    fn push(&mut self, bytes: &[u8]);
    fn next_item(&mut self) -> Result<Option<Self::Item>, Self::Error>;
    fn consumed(&self) -> u64;
    /// Bytes pushed but not consumed, where the decoder tells.
    fn buffered(&self) -> Option<usize>;
    fn finish_ok(&self) -> bool;
}

impl StreamDecoder for ft_log::Decoder {
    type Item = ft_log::Entry;
    type Error = ft_log::CodecError;
    fn push(&mut self, bytes: &[u8]) {
        ft_log::Decoder::push(self, bytes);
    }
    fn next_item(&mut self) -> Result<Option<Self::Item>, Self::Error> {
        self.next_entry()
    }
    fn consumed(&self) -> u64 {
        ft_log::Decoder::consumed(self)
    }
    fn buffered(&self) -> Option<usize> {
        None
    }
    fn finish_ok(&self) -> bool {
        self.finish().is_ok()
    }
}

impl<M: serde::de::DeserializeOwned> StreamDecoder for ft_log::MessageDecoder<M> {
    type Item = M;
    type Error = ft_log::ChannelError;
    fn push(&mut self, bytes: &[u8]) {
        ft_log::MessageDecoder::push(self, bytes);
    }
    fn next_item(&mut self) -> Result<Option<M>, Self::Error> {
        self.next_message()
    }
    fn consumed(&self) -> u64 {
        ft_log::MessageDecoder::consumed(self)
    }
    fn buffered(&self) -> Option<usize> {
        Some(ft_log::MessageDecoder::buffered(self))
    }
    fn finish_ok(&self) -> bool {
        self.finish().is_ok()
    }
}

/// Feed `input` to `d` piece by piece and pull every item. Checks: each item re-encodes
/// (by `encode`) to the frame it came from, up to non-canonical integers; a frame that
/// fails is not consumed and the same error comes back whatever arrives after (a byte
/// stream cannot be resynchronised); no byte is lost between pushed, buffered and
/// consumed; and only a stream cut at a frame boundary finishes cleanly.
pub fn check_stream<D: StreamDecoder>(
    mut d: D,
    input: &Chunking<'_>,
    header_len: usize,
    encode: impl Fn(&D::Item) -> Vec<u8>,
    what: &str,
) {
    let stream = input.stream;
    let mut pushed = 0usize;
    let mut error = None;
    for piece in input.chunks() {
        d.push(piece);
        pushed += piece.len();
        if let Some(e) = &error {
            assert_eq!(
                d.next_item().err().as_ref(),
                Some(e),
                "{what}: error not repeated"
            );
            continue;
        }
        loop {
            let before = d.consumed() as usize;
            match d.next_item() {
                Ok(Some(item)) => {
                    let after = d.consumed() as usize;
                    // The first item's bytes include the stream header.
                    let frame = &stream[before.max(header_len)..after];
                    assert_reencodes(frame, &encode(&item), what);
                }
                Ok(None) => break,
                Err(e) => {
                    // Only the stream header may have gone (checked in the same call).
                    let now = d.consumed() as usize;
                    assert!(
                        now == before || (before == 0 && now == header_len),
                        "{what}: a bad frame was consumed ({before} -> {now})"
                    );
                    error = Some(e);
                    break;
                }
            }
        }
        if let Some(b) = d.buffered() {
            assert_eq!(b + d.consumed() as usize, pushed, "{what}: bytes lost");
        }
    }
    if error.is_none() && d.finish_ok() {
        assert_eq!(d.consumed() as usize, stream.len(), "{what}: unread bytes");
    }
}
