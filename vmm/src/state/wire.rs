//! The one binary encoding of machine state (vCPU, devices, clock: the types of
//! [`crate::state`] and [`crate::platform::PlatformState`]) wherever it crosses to another
//! VMM: the checkpoints of a log and the logging channel's state transfer. bincode's
//! standard configuration, with a limit on what a decode may claim, and no bytes allowed
//! after the value. Snapshots keep the same types as JSON on disk, where an operator
//! reads and edits them.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Most bytes one decode may allocate for (a vCPU state is about 8 KiB, the devices less;
/// a machine state with its queues well under a MiB).
pub const LIMIT: usize = 4 << 20;

/// Why machine state did not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The value would not encode (a type this encoding cannot carry).
    #[error("cannot encode the {what}")]
    Encode {
        /// What was encoded: "vCPU state", "device state", "machine state".
        what: &'static str,
        /// bincode's reason.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// The bytes are not a value of the type (damaged, from another version, or over
    /// [`LIMIT`]).
    #[error("the {what} does not decode")]
    Decode {
        /// What was decoded.
        what: &'static str,
        /// bincode's reason.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// The bytes hold a value and then more.
    #[error("the {what} has {extra} bytes after its end")]
    Trailing {
        /// What was decoded.
        what: &'static str,
        /// Bytes left over.
        extra: usize,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// `value` in the wire encoding; `what` names it in an error.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|source| WireError::Encode { what, source })
}

/// A `T` from `bytes` (untrusted: the caller still validates what it means).
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, WireError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|source| WireError::Decode { what, source })?;
    match bytes.len() - used {
        0 => Ok(value),
        extra => Err(WireError::Trailing { what, extra }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Sample {
        regs: Vec<u64>,
        name: String,
    }

    fn sample() -> Sample {
        Sample {
            regs: vec![1, u64::MAX, 0x1234],
            name: "pit".into(),
        }
    }

    #[test]
    fn a_value_survives_the_round_trip() {
        let bytes = encode("sample", &sample()).unwrap();
        assert_eq!(decode::<Sample>("sample", &bytes).unwrap(), sample());
    }

    #[test]
    fn damage_is_an_error_naming_what() {
        let mut bytes = encode("sample", &sample()).unwrap();
        let err = decode::<Sample>("sample", &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            err.to_string().contains("the sample does not decode"),
            "{err}"
        );
        bytes.push(0);
        let err = decode::<Sample>("sample", &bytes).unwrap_err();
        assert_eq!(err.to_string(), "the sample has 1 bytes after its end");
    }

    #[test]
    fn a_claimed_length_over_the_limit_allocates_nothing() {
        // A Vec<u64> claiming 2^40 elements in a few bytes.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode::<Sample>("sample", &bytes),
            Err(WireError::Decode { .. })
        ));
    }

    #[test]
    fn it_is_the_encoding_the_log_always_had() {
        // Logs written before this module (bincode's standard configuration) still decode.
        let old = bincode::serde::encode_to_vec(sample(), bincode::config::standard()).unwrap();
        assert_eq!(encode("sample", &sample()).unwrap(), old);
    }
}
