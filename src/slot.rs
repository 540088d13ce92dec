//! Key → hash slot, as Redis Cluster computes it.
//!
//! A Redis Cluster splits the keyspace into [`SLOT_COUNT`] hash slots and
//! assigns each slot to one master. A key's slot is `CRC16(key) mod 16384`,
//! using the CRC16/XMODEM variant (polynomial 0x1021, initial value 0, no
//! reflection). Every node computes the same function, so the proxy can route a
//! command to the owner of its keys without asking anyone.
//!
//! Hash tags let applications force keys into one slot: when a key contains
//! `{...}` with a non-empty body, only that body is hashed, so
//! `{user1000}.following` and `{user1000}.followers` land together and can be
//! used in one multi-key command.

/// Number of hash slots in a Redis Cluster (slots are `0..SLOT_COUNT`).
pub const SLOT_COUNT: u16 = 16384;

/// The part of `key` that is hashed when hash tags are honoured.
///
/// Per the Redis Cluster specification: find the first `{`; if a `}` follows
/// it somewhere later and at least one byte sits between the two, hash only
/// those bytes. Otherwise hash the whole key. Only the *first* `{` and the
/// first `}` after it count, so `foo{{bar}}zap` hashes `{bar` and
/// `foo{}{bar}` hashes the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = key.get(open + 1..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => rest.get(..close).unwrap_or(key),
        _ => key,
    }
}

/// The hash slot of `key`: CRC16/XMODEM of the key (or of its hash tag when
/// `hashtags` is true) modulo 16384.
///
/// `hashtags` is false only for deployments that route by the whole key
/// (Envoy's `enable_hashtagging: false`); a real Redis Cluster always honours
/// tags, so turning them off there sends tagged keys to the wrong node.
#[inline]
pub fn key_slot(key: &[u8], hashtags: bool) -> u16 {
    let hashed = if hashtags { hash_tag(key) } else { key };
    // 16384 is a power of two, so the modulo is a mask.
    crc16::State::<crc16::XMODEM>::calculate(hashed) & (SLOT_COUNT - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_xmodem_check_value() {
        // The standard CRC16/XMODEM check value, also quoted by the cluster spec.
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31C3
        );
    }

    #[test]
    fn known_slots() {
        assert_eq!(key_slot(b"foo", true), 12182);
        assert_eq!(key_slot(b"bar", true), 5061);
        assert_eq!(key_slot(b"hello", true), 866);
        assert_eq!(key_slot(b"somekey", true), 11058);
        assert_eq!(key_slot(b"", true), 0);
        assert_eq!(key_slot(b"123456789", false), 0x31C3);
    }

    #[test]
    fn slots_are_in_range() {
        for i in 0..5000u32 {
            let key = format!("key:{i}");
            assert!(key_slot(key.as_bytes(), true) < SLOT_COUNT);
        }
    }

    #[test]
    fn hash_tags_group_keys() {
        let a = key_slot(b"{user1000}.following", true);
        let b = key_slot(b"{user1000}.followers", true);
        assert_eq!(a, b);
        assert_eq!(a, key_slot(b"user1000", true));
    }

    #[test]
    fn spec_tricky_tags() {
        // `{}` alone: empty tag, hash the whole key.
        assert_eq!(hash_tag(b"{}"), b"{}");
        assert_eq!(key_slot(b"{}", true), key_slot(b"{}", false));
        // Empty first tag: the later `{bar}` is ignored, whole key hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(
            key_slot(b"foo{}{bar}", true),
            key_slot(b"foo{}{bar}", false)
        );
        // First `{` then first `}` after it: the tag is `{bar`.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(key_slot(b"foo{{bar}}zap", true), key_slot(b"{bar", false));
        // Only the first tag counts.
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(key_slot(b"foo{bar}{zap}", true), key_slot(b"bar", false));
    }

    #[test]
    fn unterminated_or_reversed_braces_hash_whole_key() {
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b"foo}bar{"), b"foo}bar{");
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"}{a}"), b"a");
    }

    #[test]
    fn hashtags_off_hashes_whole_key() {
        assert_ne!(
            key_slot(b"{user1000}.following", false),
            key_slot(b"{user1000}.followers", false)
        );
    }
}
