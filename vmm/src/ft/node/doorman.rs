//! Handshakes with would-be backups, off the control loop. Each connection to `--listen`
//! gets its own thread for the channel's handshake and the backup's hello, each with its
//! deadline; only a peer that has proved it holds the key and said which VM it is for
//! reaches the control loop. A peer that trickles its handshake (or never finishes it)
//! then holds one of a few handshake slots for at most the deadlines, not the primary's
//! control loop, so the next backup is not kept waiting behind it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ft_log::channel::{MessageDecoder, ToPrimary};

use super::{FtError, HANDSHAKE_LIMIT};
use crate::ft::key::ChannelKey;
use crate::ft::link::{chain, recv, LinkError};
use crate::ft::secure::SecureStream;

/// Handshakes in progress at most; further connections are closed at once.
const MAX_HANDSHAKES: usize = 4;
/// How long a peer that completed the handshake may take to say hello.
const HELLO_LIMIT: Duration = Duration::from_secs(10);

/// A peer that holds the key and has said hello.
pub(in crate::ft) struct Candidate {
    pub stream: SecureStream,
    pub dec: MessageDecoder<ToPrimary>,
    pub peer: SocketAddr,
    pub vm_name: String,
}

/// What the doorman tells the control loop.
pub(in crate::ft) enum Knock {
    Ready(Box<Candidate>),
    Failed { from: String, why: String },
}

/// The listening side: its thread accepts, one thread per handshake.
pub(in crate::ft) struct Doorman {
    knocks: Receiver<Knock>,
}

impl Doorman {
    pub fn spawn(listener: TcpListener, key: ChannelKey) -> Self {
        // Few knocks wait: the control loop takes one whenever it can protect the guest.
        let (tx, rx) = crossbeam_channel::bounded(MAX_HANDSHAKES);
        let busy = Arc::new(AtomicUsize::new(0));
        let spawned = std::thread::Builder::new()
            .name("ftvm-doorman".into())
            .spawn(move || accept_loop(listener, key, tx, busy));
        if let Err(e) = spawned {
            tracing::error!("cannot start the thread that accepts backups: {e}");
        }
        Self { knocks: rx }
    }

    /// A knock that has arrived, if any (never blocks).
    pub fn next(&self) -> Option<Knock> {
        self.knocks.try_recv().ok()
    }
}

fn accept_loop(listener: TcpListener, key: ChannelKey, tx: Sender<Knock>, busy: Arc<AtomicUsize>) {
    // The control loop no longer polls the socket: this thread waits on it.
    if let Err(e) = listener.set_nonblocking(false) {
        tracing::error!("cannot wait for backups: {e}");
        return;
    }
    for conn in listener.incoming() {
        let tcp = match conn {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("accepting a backup failed: {e}");
                // A persistent error (no file descriptors left) must not spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
            busy.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                peer = ?tcp.peer_addr().ok(),
                "too many handshakes in progress; connection closed"
            );
            continue;
        }
        let (key, tx, slot) = (key.clone(), tx.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("ftvm-handshake".into())
            .spawn(move || {
                let from = tcp
                    .peer_addr()
                    .map_or_else(|_| "an unknown peer".to_owned(), |a| a.to_string());
                let knock = match handshake(tcp, &key) {
                    Ok(c) => Knock::Ready(Box::new(c)),
                    Err(e) => Knock::Failed {
                        from,
                        why: chain(&e),
                    },
                };
                slot.fetch_sub(1, Ordering::SeqCst);
                if let Err(TrySendError::Full(_)) = tx.try_send(knock) {
                    tracing::warn!("knocks are piling up; one dropped");
                }
            });
        if let Err(e) = spawned {
            busy.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("cannot start a handshake thread: {e}");
        }
    }
}

/// The channel's handshake, then the backup's hello, each within its deadline.
fn handshake(tcp: TcpStream, key: &ChannelKey) -> Result<Candidate, FtError> {
    tcp.set_nodelay(true).map_err(LinkError::from)?;
    let peer = tcp.peer_addr().map_err(LinkError::from)?;
    // Nothing about the guest goes to a peer that has not proved it holds the key.
    let mut stream =
        SecureStream::accept(tcp, key, HANDSHAKE_LIMIT).map_err(|source| FtError::Secure {
            peer: peer.to_string(),
            source,
        })?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(LinkError::from)?;
    let mut dec = MessageDecoder::<ToPrimary>::new();
    let deadline = Instant::now() + HELLO_LIMIT;
    let vm_name = loop {
        match recv(&mut stream, &mut dec)? {
            Some(ToPrimary::Hello { vm_name }) => break vm_name,
            Some(_) => return Err(LinkError::Protocol("no hello".into()).into()),
            None if Instant::now() > deadline => return Err(LinkError::Timeout(HELLO_LIMIT).into()),
            None => {}
        }
    };
    Ok(Candidate {
        stream,
        dec,
        peer,
        vm_name,
    })
}
