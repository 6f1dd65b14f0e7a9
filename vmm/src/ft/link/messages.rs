//! One message at a time over the channel's stream: [`recv`] with a bound on how long a
//! trickling peer keeps the caller, [`send`], and [`chain`] to report an error whole.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ft_log::channel::{encode_message, MessageDecoder};

use super::LinkError;
use crate::ft::deadline::read_timed_out;

/// How long one [`recv`] keeps reading bytes that do not complete a message.
const RECV_SLICE: Duration = Duration::from_millis(200);

/// Read the next message, waiting as the stream's read timeout allows (and at most about
/// `RECV_SLICE` while bytes trickle in). `Ok(None)`: no whole message yet.
pub fn recv<M: serde::de::DeserializeOwned>(
    stream: &mut impl Read,
    dec: &mut MessageDecoder<M>,
) -> Result<Option<M>, LinkError> {
    // On the stack: the link's receiver calls this every few milliseconds when idle.
    let mut buf = [0u8; 16 * 1024];
    let started = Instant::now();
    loop {
        if let Some(m) = dec.next_message()? {
            return Ok(Some(m));
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                dec.finish()?;
                return Err(LinkError::Closed);
            }
            Ok(n) => {
                dec.push(&buf[..n]);
                if let Some(m) = dec.next_message()? {
                    return Ok(Some(m));
                }
                // A peer trickling a frame that never completes must not keep the caller
                // here past its own deadlines: give control back now and then.
                if started.elapsed() >= RECV_SLICE {
                    return Ok(None);
                }
            }
            Err(e) if read_timed_out(&e) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// An error with its sources, on one line (for the failure verdict and status).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Write one message to `stream`, encoded and framed.
pub fn send<M: serde::Serialize>(stream: &mut impl Write, m: &M) -> Result<(), LinkError> {
    stream.write_all(&encode_message(m))?;
    Ok(())
}
