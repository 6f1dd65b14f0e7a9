//! The logging channel's security: mutual authentication by a shared key, then encryption
//! and integrity of every byte (DESIGN.md section 3: the channel carries the whole guest
//! memory, and an acknowledgement on it releases output).
//!
//! The protocol is Noise (`Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, from the `snow` crate):
//! both sides make fresh ephemeral keys per connection and mix in the pair's 32-byte
//! pre-shared key. The backup connects and starts; a peer that lacks the key fails the
//! first handshake message (the primary answers nothing) or the second (the backup
//! refuses). Fresh ephemerals on both sides mean the traffic of an old session, replayed,
//! cannot be decrypted or continued: its first transport record fails authentication.
//!
//! After the handshake each direction is a sequence of records, `u16` big-endian length
//! then a Noise transport message (ciphertext and 16-byte tag, 65,535 bytes at most). The
//! nonce is the record's number in its direction, so a record dropped, repeated or moved
//! fails authentication like a flipped bit. [`SecureStream`] presents the decrypted bytes
//! as a plain byte stream, so the channel's framing (`ft_log::channel`) runs inside
//! unchanged.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use snow::StatelessTransportState;

pub use super::key::{ChannelKey, KeyError};
use crate::bus::lock;
use crate::ft::deadline::read_timed_out;

const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake: a peer speaking another protocol (or version) fails it.
const PROLOGUE: &[u8] = b"ftvm logging channel 2";
/// Noise's largest message, and so the largest record body.
const MAX_RECORD: usize = 65_535;
const TAG_LEN: usize = 16;
/// Plaintext bytes per record at most.
const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// Each side's handshake message: an ephemeral public key and an empty payload's tag.
const HANDSHAKE_LEN: usize = 32 + TAG_LEN;

/// Why the channel's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    /// A handshake message failed authentication: the peer lacks the key or speaks another
    /// protocol.
    #[error("the handshake failed: the peer does not hold this VM's channel key, or is not an ftvm of this version")]
    Refused(#[source] snow::Error),
    /// The Noise library could not build the handshake or one of this side's messages.
    #[error("cannot set up the handshake")]
    Setup(#[source] snow::Error),
    /// No complete handshake from the peer within this limit.
    #[error("no handshake from the peer within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before the handshake completed.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// A handshake message had this many bytes instead of the 48 expected.
    #[error("the peer sent a handshake message of {0} bytes (expected {HANDSHAKE_LEN})")]
    HandshakeLength(usize),
    /// Reading or writing the connection failed during the handshake.
    #[error("handshake I/O failed")]
    Io(#[from] io::Error),
}

/// Damage found on an established channel (carried inside an `io::Error` of kind
/// `InvalidData`, since it surfaces through `Read`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// A record failed authentication (damaged, forged, replayed or out of order).
    #[error("record {record} of the logging channel failed authentication: damaged, forged, replayed or out of order")]
    Forged {
        /// The record's number in its direction.
        record: u64,
    },
    /// A record is shorter than its authentication tag.
    #[error("record {record} of the logging channel is {len} bytes, shorter than its tag")]
    Short {
        /// The record's number in its direction.
        record: u64,
        /// Its length in bytes.
        len: usize,
    },
    /// A direction has used every record number (nonce) there is.
    #[error("the logging channel has used up its nonces")]
    Exhausted,
}

impl From<RecordError> for io::Error {
    fn from(e: RecordError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// One side's view of an authenticated, encrypted channel. Clones share the session, so a
/// sender thread and a receiver thread can each hold one; each direction keeps its own
/// record counter under its own lock.
pub struct SecureStream {
    tcp: TcpStream,
    session: Arc<Session>,
}

struct Session {
    transport: StatelessTransportState,
    tx: Mutex<Sending>,
    rx: Mutex<Receiving>,
}

#[derive(Default)]
struct Sending {
    nonce: u64,
    /// A record was half written (a write error or timeout): the stream is unusable.
    broken: bool,
    record: Vec<u8>,
}

#[derive(Default)]
struct Receiving {
    nonce: u64,
    /// The record being read: length prefix, then body, as far as it has arrived.
    record: Vec<u8>,
    plain: Vec<u8>,
    taken: usize,
    failed: Option<RecordError>,
}

/// Wait for exactly `buf.len()` bytes before `deadline`, whatever the peer's pace: a peer
/// that trickles bytes cannot stretch the wait.
fn read_exact_by(
    tcp: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    limit: Duration,
) -> Result<(), SecureError> {
    let mut have = 0;
    while have < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SecureError::Timeout(limit));
        }
        tcp.set_read_timeout(Some(left))?;
        match tcp.read(&mut buf[have..]) {
            Ok(0) => return Err(SecureError::Closed),
            Ok(n) => have += n,
            Err(e) if read_timed_out(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn read_handshake(
    tcp: &mut TcpStream,
    deadline: Instant,
    limit: Duration,
) -> Result<[u8; HANDSHAKE_LEN], SecureError> {
    let mut len = [0u8; 2];
    read_exact_by(tcp, &mut len, deadline, limit)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len != HANDSHAKE_LEN {
        return Err(SecureError::HandshakeLength(len));
    }
    let mut msg = [0u8; HANDSHAKE_LEN];
    read_exact_by(tcp, &mut msg, deadline, limit)?;
    Ok(msg)
}

fn write_handshake(
    tcp: &mut TcpStream,
    hs: &mut snow::HandshakeState,
    limit: Duration,
) -> Result<(), SecureError> {
    let mut out = [0u8; 2 + HANDSHAKE_LEN];
    let n = hs
        .write_message(&[], &mut out[2..])
        .map_err(SecureError::Setup)?;
    if n != HANDSHAKE_LEN {
        return Err(SecureError::HandshakeLength(n));
    }
    out[..2].copy_from_slice(&(HANDSHAKE_LEN as u16).to_be_bytes());
    tcp.set_write_timeout(Some(limit))?;
    tcp.write_all(&out)?;
    Ok(())
}

fn builder(key: &ChannelKey) -> Result<snow::Builder<'_>, SecureError> {
    let params = NOISE_PARAMS.parse().map_err(SecureError::Setup)?;
    snow::Builder::new(params)
        .psk(0, key.bytes())
        .and_then(|b| b.prologue(PROLOGUE))
        .map_err(SecureError::Setup)
}

impl SecureStream {
    /// The connecting side (a backup): run the handshake on `tcp` within `limit`.
    pub fn connect(
        mut tcp: TcpStream,
        key: &ChannelKey,
        limit: Duration,
    ) -> Result<Self, SecureError> {
        let deadline = Instant::now() + limit;
        let mut hs = builder(key)?
            .build_initiator()
            .map_err(SecureError::Setup)?;
        write_handshake(&mut tcp, &mut hs, limit)?;
        let reply = read_handshake(&mut tcp, deadline, limit)?;
        hs.read_message(&reply, &mut [])
            .map_err(SecureError::Refused)?;
        Self::established(tcp, hs)
    }

    /// The accepting side (a primary): run the handshake on `tcp` within `limit`. Nothing
    /// is sent to a peer whose first message does not prove it holds the key.
    pub fn accept(
        mut tcp: TcpStream,
        key: &ChannelKey,
        limit: Duration,
    ) -> Result<Self, SecureError> {
        let deadline = Instant::now() + limit;
        let mut hs = builder(key)?
            .build_responder()
            .map_err(SecureError::Setup)?;
        let first = read_handshake(&mut tcp, deadline, limit)?;
        hs.read_message(&first, &mut [])
            .map_err(SecureError::Refused)?;
        write_handshake(&mut tcp, &mut hs, limit)?;
        Self::established(tcp, hs)
    }

    fn established(tcp: TcpStream, hs: snow::HandshakeState) -> Result<Self, SecureError> {
        tcp.set_read_timeout(None)?;
        tcp.set_write_timeout(None)?;
        let transport = hs
            .into_stateless_transport_mode()
            .map_err(SecureError::Setup)?;
        Ok(Self {
            tcp,
            session: Arc::new(Session {
                transport,
                tx: Mutex::default(),
                rx: Mutex::default(),
            }),
        })
    }

    /// Another handle on the same channel (for a second thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            tcp: self.tcp.try_clone()?,
            session: self.session.clone(),
        })
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// Bounds each `read` (for every handle: the socket is shared).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(t)
    }

    /// Bounds each `write`: a peer that stops reading cannot hold a writer forever.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp.set_write_timeout(t)
    }

    /// Shut the underlying TCP connection down (for every handle: the socket is shared).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp.shutdown(how)
    }
}

impl Write for SecureStream {
    /// Seals up to one record's worth of `data` and sends it whole.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut tx = lock(&self.session.tx);
        if tx.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write to the logging channel failed midway",
            ));
        }
        let n = data.len().min(MAX_PLAIN);
        let nonce = tx.nonce;
        tx.nonce = nonce.checked_add(1).ok_or(RecordError::Exhausted)?;
        let Sending { record, .. } = &mut *tx;
        record.resize(2 + n + TAG_LEN, 0);
        let sealed = self
            .session
            .transport
            .write_message(nonce, &data[..n], &mut record[2..])
            .map_err(|e| io::Error::other(format!("cannot seal a record: {e}")))?;
        // `sealed` is n + TAG_LEN <= MAX_RECORD, so it fits the prefix.
        record[..2].copy_from_slice(&(sealed as u16).to_be_bytes());
        let total = 2 + sealed;
        if let Err(e) = (&self.tcp).write_all(&record[..total]) {
            tx.broken = true;
            return Err(e);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&self.tcp).flush()
    }
}

impl Read for SecureStream {
    /// Decrypted bytes, as they arrive. A read timeout on the socket surfaces as
    /// `WouldBlock`/`TimedOut` with any partial record kept for the next call.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut rx = lock(&self.session.rx);
        loop {
            if rx.taken < rx.plain.len() {
                let n = out.len().min(rx.plain.len() - rx.taken);
                out[..n].copy_from_slice(&rx.plain[rx.taken..rx.taken + n]);
                rx.taken += n;
                return Ok(n);
            }
            if let Some(e) = &rx.failed {
                return Err(e.clone().into());
            }
            let have = rx.record.len();
            let need = if have < 2 {
                2
            } else {
                2 + usize::from(u16::from_be_bytes([rx.record[0], rx.record[1]]))
            };
            if have == need && have >= 2 {
                open_record(&self.session.transport, &mut rx)?;
                continue;
            }
            rx.record.resize(need, 0);
            let got = (&self.tcp).read(&mut rx.record[have..need]);
            match got {
                Ok(0) => {
                    rx.record.truncate(have);
                    if have == 0 {
                        return Ok(0);
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the logging channel inside a record",
                    ));
                }
                Ok(n) => rx.record.truncate(have + n),
                Err(e) => {
                    rx.record.truncate(have);
                    return Err(e);
                }
            }
        }
    }
}

/// Authenticate and decrypt the complete record in `rx.record`.
fn open_record(transport: &StatelessTransportState, rx: &mut Receiving) -> io::Result<()> {
    let record = rx.nonce;
    let body_len = rx.record.len() - 2;
    let result = if body_len < TAG_LEN {
        Err(RecordError::Short {
            record,
            len: body_len,
        })
    } else {
        let Receiving {
            record: r, plain, ..
        } = &mut *rx;
        plain.resize(body_len - TAG_LEN, 0);
        transport
            .read_message(record, &r[2..], plain)
            .map_err(|_| RecordError::Forged { record })
    };
    match result {
        Ok(n) => {
            rx.plain.truncate(n);
            rx.taken = 0;
            rx.record.clear();
            rx.nonce = record.checked_add(1).ok_or(RecordError::Exhausted)?;
            Ok(())
        }
        Err(e) => {
            rx.plain.clear();
            rx.taken = 0;
            rx.failed = Some(e.clone());
            Err(e.into())
        }
    }
}

#[cfg(test)]
#[path = "secure_tests.rs"]
mod tests;
