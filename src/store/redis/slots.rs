//! Where Redis Cluster puts a key: CRC16 (XMODEM) of its hash tag, modulo
//! 16384 slots. The queue's parts get tags whose slots are spread evenly
//! over the slot space, so that any number of masters, each holding a
//! contiguous range of slots as `redis-cli --cluster create` assigns them,
//! gets its share of the parts.

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of a hash tag (the text between the braces of a key).
pub fn slot(tag: &[u8]) -> u16 {
    crc16(tag) % SLOTS
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot ranges the tags aim at: 1024 buckets of 16 slots.
const BUCKETS: u16 = 1024;

/// The hash tag of queue part `index` (below 1024): `q<index>.<n>` with the
/// first `n` whose slot falls in bucket `bitreverse(index)`. The first 2^k
/// parts land in 2^k evenly spaced buckets, whatever the part count, and a
/// part's tag never depends on how many parts there are.
pub fn shard_tag(index: u32) -> String {
    assert!(index < u32::from(BUCKETS), "at most 1024 queue parts");
    let bucket = (index as u16).reverse_bits() >> 6;
    (0u32..)
        .map(|n| format!("q{index}.{n}"))
        .find(|tag| slot(tag.as_bytes()) / (SLOTS / BUCKETS) == bucket)
        .expect("CRC16 reaches every bucket")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // `CLUSTER KEYSLOT` of these keys on a real cluster.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 0x31C3 % SLOTS);
    }

    #[test]
    fn parts_spread_evenly_over_the_slot_space() {
        let slots: Vec<u16> = (0..16).map(|i| slot(shard_tag(i).as_bytes())).collect();
        for masters in [1u16, 2, 3, 4, 5, 8] {
            // `--cluster create` gives each master a contiguous range.
            let per = SLOTS.div_ceil(masters);
            let mut counts = vec![0; masters as usize];
            for s in &slots {
                counts[(s / per) as usize] += 1;
            }
            let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(most - least <= 1, "{masters} masters: {counts:?}");
        }
        let mut unique = slots.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 16);
    }

    #[test]
    fn a_tag_does_not_depend_on_the_part_count() {
        assert_eq!(shard_tag(3), shard_tag(3));
        assert!(shard_tag(0).starts_with("q0."));
        let all: std::collections::BTreeSet<u16> = (0..1024)
            .map(|i| slot(shard_tag(i).as_bytes()) / 16)
            .collect();
        assert_eq!(all.len(), 1024, "one bucket each");
    }
}
