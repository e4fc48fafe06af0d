//! One record as it lies in a segment: its length, a CRC-32 of the length,
//! kind and payload, its kind, then the payload. A frame that does not
//! check out (a torn tail, zeros a crash left after the end, a flipped bit)
//! is never read as a record.

/// Length (4), CRC-32 (4), kind (1).
pub const HEADER: usize = 9;

/// The largest payload a frame may say it has: a length past it is
/// garbage, not a record to allocate for (an event's body is bounded far
/// below it by the ingress).
pub const MAX_PAYLOAD: u32 = 64 << 20;

fn checksum(len: u32, kind: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&[kind]);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends the frame of `payload` to `out`.
pub fn encode(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, kind, payload).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// What a frame's header says: its kind and its payload's length, once the
/// length is plausible; the checksum is checked against the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub crc: u32,
    pub kind: u8,
}

impl Header {
    /// None for a length no frame has.
    pub fn parse(bytes: &[u8; HEADER]) -> Option<Self> {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        (len <= MAX_PAYLOAD).then_some(Self {
            len,
            crc,
            kind: bytes[8],
        })
    }

    /// The payload is the one this header was written with.
    pub fn checks(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && checksum(self.len, self.kind, payload) == self.crc
    }
}

/// Reads the first frame of `bytes`: its kind and payload, and the bytes it
/// takes; None when `bytes` does not start with a whole, valid frame.
pub fn decode(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let header: &[u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
    let header = Header::parse(header)?;
    let end = HEADER + header.len as usize;
    let payload = bytes.get(HEADER..end)?;
    header
        .checks(payload)
        .then_some((header.kind, payload, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_and_every_cut_or_flip_is_refused() {
        let mut bytes = Vec::new();
        encode(&mut bytes, 7, b"wedding w-42 paid");
        assert_eq!(
            decode(&bytes),
            Some((7, &b"wedding w-42 paid"[..], bytes.len()))
        );
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                assert_eq!(decode(&flipped), None, "bit {bit} of byte {at}");
            }
        }
    }

    #[test]
    fn zeros_and_absurd_lengths_are_no_frame() {
        assert_eq!(decode(&[0u8; 64]), None);
        let mut huge = vec![0xff; HEADER];
        huge.extend_from_slice(&[0; 16]);
        assert_eq!(decode(&huge), None);
    }
}
