//! The vCPU and device states of checkpoint deltas (bincode, a few KiB, mostly the XSAVE
//! area) change little from one delta to the next: each is sent as its XOR with the one
//! sent before (when it has the same length), lz4-compressed, with its CRC32, so a receiver
//! whose previous copy drifted finds out. Both sides keep the previous state per stream.
//!
//! Encoded: length (u32 LE), CRC32 of the state (u32 LE), 1 if XORed with the previous
//! state else 0, then the lz4 block.

use super::PageCodecError;

/// Largest state a decoder accepts (a vCPU state is about 8 KiB, devices less).
pub const MAX_STATE: usize = 1 << 20;
const HEAD: usize = 9;

/// How a delta's `vcpu` and `devices` bytes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum StateEncoding {
    /// As the VMM encoded them.
    #[default]
    Raw,
    /// Through a [`StateCodec`] each.
    XorLz4,
}

/// One side's previous state of one stream (a vCPU's, or the devices').
#[derive(Debug, Default, Clone)]
pub struct StateCodec {
    prev: Vec<u8>,
}

impl StateCodec {
    /// Encode `state` (XORed with the previous one when the lengths match) and remember it
    /// as the previous state for the next call.
    pub fn encode(&mut self, state: &[u8]) -> Vec<u8> {
        let based = self.prev.len() == state.len();
        let body: Vec<u8> = if based {
            state.iter().zip(&self.prev).map(|(a, b)| a ^ b).collect()
        } else {
            state.to_vec()
        };
        let mut out = Vec::with_capacity(HEAD + state.len() / 4);
        out.extend_from_slice(&(state.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(state).to_le_bytes());
        out.push(u8::from(based));
        out.extend_from_slice(&lz4_flex::block::compress(&body));
        self.prev = state.to_vec();
        out
    }

    /// Decode (untrusted): the length is bounded, the block must fill it exactly, the CRC
    /// must match. A failure leaves the previous state as it was.
    pub fn decode(&mut self, encoded: &[u8]) -> Result<Vec<u8>, PageCodecError> {
        let head = encoded
            .get(..HEAD)
            .ok_or(PageCodecError::State { len: encoded.len() })?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let sent = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let based = match head[8] {
            0 => false,
            1 => true,
            _ => return Err(PageCodecError::State { len }),
        };
        if len > MAX_STATE || (based && self.prev.len() != len) {
            return Err(PageCodecError::State { len });
        }
        let mut out = vec![0u8; len];
        match lz4_flex::block::decompress_into(&encoded[HEAD..], &mut out) {
            Ok(n) if n == len => {}
            _ => {
                return Err(PageCodecError::Decompress {
                    block: 0,
                    expected: len,
                })
            }
        }
        if based {
            for (b, p) in out.iter_mut().zip(&self.prev) {
                *b ^= p;
            }
        }
        let computed = crc32fast::hash(&out);
        if computed != sent {
            return Err(PageCodecError::Drift { sent, computed });
        }
        self.prev.clone_from(&out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_shrink() {
        let (mut tx, mut rx) = (StateCodec::default(), StateCodec::default());
        let mut state: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        for round in 0..5u8 {
            state[round as usize * 7] = round;
            let enc = tx.encode(&state);
            if round > 0 {
                assert!(enc.len() < 100, "{} bytes", enc.len());
            }
            assert_eq!(rx.decode(&enc).unwrap(), state);
        }
        // A new length starts over from nothing.
        state.push(1);
        assert_eq!(rx.decode(&tx.encode(&state)).unwrap(), state);
    }

    #[test]
    fn damage_and_drift_are_errors() {
        let (mut tx, mut rx) = (StateCodec::default(), StateCodec::default());
        let first = tx.encode(&[1; 100]);
        rx.decode(&first).unwrap();
        let second = tx.encode(&[2; 100]);
        let mut drifted = rx.clone();
        drifted.prev[5] = 9;
        assert!(matches!(
            drifted.decode(&second),
            Err(PageCodecError::Drift { .. })
        ));
        let mut huge = second.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(rx.clone().decode(&huge).is_err());
        assert!(rx.clone().decode(&second[..5]).is_err());
        assert!(rx.clone().decode(&second[..second.len() - 1]).is_err());
        let mut flag = second.clone();
        flag[8] = 7;
        assert!(rx.clone().decode(&flag).is_err());
        assert_eq!(rx.decode(&second).unwrap(), vec![2; 100]);
    }
}
