//! The client ("clerk"): finds the primary through the view service, sends each operation
//! with a unique id `(client, seq)`, and retries, asking the view service again, until a
//! primary answers.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::net::{Caller, Faults, NetError};
use crate::protocol::{ClientOp, ErrorCode, Op, Request, Response, View, ViewReply};

/// Errors of client operations.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No primary answered within [`ClerkConfig::op_timeout`] (the duration carried).
    #[error("gave up after {0:?}: no primary answered")]
    Timeout(Duration),
    /// The server called refused the operation for good (too large, malformed, or no room for a
    /// new writer): retrying would not help.
    #[error("the server refused the request ({code:?}): {detail}")]
    Refused {
        /// Why it was refused.
        code: ErrorCode,
        /// The server's explanation.
        detail: String,
    },
    /// An answer of the wrong kind for the request (shown in debug form).
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// A call to the view service failed ([`get_view`], [`Clerk::view`]; operations retry
    /// instead).
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClerkConfig {
    /// The view service's address (`IP:PORT`).
    pub vs: String,
    /// Timeout of one call.
    pub rpc_timeout: Duration,
    /// Pause between attempts.
    pub retry_interval: Duration,
    /// Give up an operation after this long (`None`: retry forever).
    pub op_timeout: Option<Duration>,
    /// Faults injected into this client's calls (for tests).
    pub faults: Arc<Faults>,
}

impl ClerkConfig {
    /// Settings for the view service at `vs`: 1 s call timeout, 20 ms between attempts,
    /// giving up after 10 s, no faults.
    pub fn new(vs: impl Into<String>) -> ClerkConfig {
        ClerkConfig {
            vs: vs.into(),
            rpc_timeout: Duration::from_millis(1000),
            retry_interval: Duration::from_millis(20),
            op_timeout: Some(Duration::from_secs(10)),
            faults: Arc::new(Faults::default()),
        }
    }
}

/// A random 64-bit number (std's per-process random hashing keys, mixed with the time).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Asks the view service for the current view.
pub fn get_view(caller: &Caller, vs: &str) -> Result<ViewReply, ClientError> {
    match caller.call(vs, &Request::GetView)? {
        Response::View(r) => Ok(r),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// A client of the key/value service. One operation at a time.
pub struct Clerk {
    config: ClerkConfig,
    caller: Caller,
    id: u64,
    seq: u64,
    primary: Option<String>,
}

impl Clerk {
    /// A clerk with a random client id.
    pub fn new(config: ClerkConfig) -> Clerk {
        Clerk::with_id(config, random_u64())
    }

    /// A clerk with a chosen client id (it must be unique among clients).
    pub fn with_id(config: ClerkConfig, id: u64) -> Clerk {
        let caller = Caller::new(config.faults.clone(), config.rpc_timeout);
        Clerk {
            config,
            caller,
            id,
            seq: 0,
            primary: None,
        }
    }

    /// This client's id, the first half of its operations' unique ids.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The current view, from the view service.
    pub fn view(&self) -> Result<View, ClientError> {
        Ok(get_view(&self.caller, &self.config.vs)?.view)
    }

    /// The value of `key` ("" if missing), retrying until a primary answers.
    pub fn get(&mut self, key: &str) -> Result<String, ClientError> {
        match self.run(Op::Get {
            key: key.to_string(),
        })? {
            Response::Value(v) => Ok(v),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sets `key` to `value`, retrying until a primary answers; applied at most once.
    pub fn put(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        self.write(Op::Put {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// Adds `value` to the end of `key`'s value (missing: ""), retrying until a primary
    /// answers; applied at most once.
    pub fn append(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        self.write(Op::Append {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    fn write(&mut self, op: Op) -> Result<(), ClientError> {
        match self.run(op)? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    fn run(&mut self, op: Op) -> Result<Response, ClientError> {
        self.seq += 1;
        let request = Request::Client(ClientOp {
            client: self.id,
            seq: self.seq,
            op,
        });
        let start = Instant::now();
        loop {
            if self.primary.is_none() {
                if let Ok(reply) = get_view(&self.caller, &self.config.vs) {
                    self.primary = reply.view.primary;
                }
            }
            if let Some(p) = self.primary.clone() {
                match self.caller.call(&p, &request) {
                    Ok(r @ (Response::Ok | Response::Value(_))) => return Ok(r),
                    Ok(Response::Err {
                        code:
                            code @ (ErrorCode::TooLarge
                            | ErrorCode::BadRequest
                            | ErrorCode::TooManyClients),
                        detail,
                    }) => return Err(ClientError::Refused { code, detail }),
                    // Wrong server, not ready, no answer: ask the view service again.
                    _ => self.primary = None,
                }
            }
            if let Some(limit) = self.config.op_timeout {
                if start.elapsed() >= limit {
                    return Err(ClientError::Timeout(limit));
                }
            }
            thread::sleep(self.config.retry_interval);
        }
    }
}
