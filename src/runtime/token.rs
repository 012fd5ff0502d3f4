//! The `user_data` of io_uring operations.
//!
//! A token packs the operation kind (8 bits), the connection slot's generation
//! (24 bits) and the slot index (32 bits). A slot is reused only after every
//! operation of its previous connection has completed, and the generation changes
//! on reuse, so a completion always finds the connection that submitted it.

/// Operation kind. Worker-level kinds carry a listener index or nothing in the slot
/// field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Multishot accept; the slot field is the service index.
    Accept = 1,
    /// The worker's periodic timer.
    Tick = 2,
    /// A read of the worker's wake-up eventfd.
    Wake = 3,
    ClientRecv = 4,
    ClientSend = 5,
    BackendRecv = 6,
    BackendSend = 7,
    Connect = 8,
    /// One-shot polls of the kernel TLS relay.
    ClientReadable = 11,
    ClientWritable = 12,
    BackendReadable = 13,
    BackendWritable = 14,
    /// A receive of a reply from the key process.
    KeyReply = 15,
    /// A handshake step suspended until the key process signs. It is no ring
    /// operation, but it counts as one in flight: the TLS session is lent to the
    /// step until it finishes.
    HandshakeStep = 16,
    /// `IORING_OP_SPLICE` requests of the kernel TLS relay in ring mode.
    ClientToPipe = 17,
    PipeToBackend = 18,
    BackendToPipe = 19,
    PipeToClient = 20,
}

impl Kind {
    const ALL: [Kind; 18] = [
        Kind::Accept,
        Kind::Tick,
        Kind::Wake,
        Kind::ClientRecv,
        Kind::ClientSend,
        Kind::BackendRecv,
        Kind::BackendSend,
        Kind::Connect,
        Kind::ClientReadable,
        Kind::ClientWritable,
        Kind::BackendReadable,
        Kind::BackendWritable,
        Kind::KeyReply,
        Kind::HandshakeStep,
        Kind::ClientToPipe,
        Kind::PipeToBackend,
        Kind::BackendToPipe,
        Kind::PipeToClient,
    ];

    /// Returns the bit of this kind in a connection's set of operations in flight.
    pub fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

const GENERATION_MASK: u32 = 0xFF_FFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub generation: u32,
    pub slot: u32,
}

impl Token {
    pub fn new(kind: Kind, slot: u32, generation: u32) -> Token {
        Token {
            kind,
            generation: generation & GENERATION_MASK,
            slot,
        }
    }

    pub fn encode(self) -> u64 {
        (u64::from(self.kind as u8) << 56)
            | (u64::from(self.generation & GENERATION_MASK) << 32)
            | u64::from(self.slot)
    }

    /// Decodes a token; `None` for a value no token encodes to.
    pub fn decode(value: u64) -> Option<Token> {
        let kind_byte = (value >> 56) as u8;
        let kind = Kind::ALL
            .into_iter()
            .find(|kind| *kind as u8 == kind_byte)?;
        Some(Token {
            kind,
            generation: ((value >> 32) as u32) & GENERATION_MASK,
            slot: value as u32,
        })
    }
}

/// Advances a slot generation, wrapping within the 24 bits a token carries.
pub fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) & GENERATION_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        for kind in Kind::ALL {
            for (slot, generation) in [(0, 0), (7, 1), (u32::MAX, GENERATION_MASK)] {
                let token = Token::new(kind, slot, generation);
                assert_eq!(Token::decode(token.encode()), Some(token));
            }
        }
    }

    #[test]
    fn token_generation_wraps() {
        assert_eq!(next_generation(GENERATION_MASK), 0);
        assert_eq!(Token::new(Kind::Tick, 0, GENERATION_MASK + 1).generation, 0);
    }

    #[test]
    fn token_rejects_unknown_kind() {
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(0xFF << 56), None);
    }
}
