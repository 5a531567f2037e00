//! Instance keys: the capability a library presents on every call to the host, and a child
//! connection on every packet.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh instance key: unique in this process (and so on every connection), and unguessable.
/// The key is all a library presents when it calls the host, so it is a capability: a counter
/// would let a library in this process (or sharing a renderer process) name its neighbour's key
/// and speak, log and complete commands as another extension.
///
/// It is the counter put through a keyed permutation (a four-round Feistel network whose
/// round function is SipHash under a secret drawn from the OS's randomness, std's
/// `RandomState`): distinct counters give distinct keys by construction, so no record of the
/// keys issued is kept (memory stays flat however many instances come and go), and without
/// the secret, which lives only in the host, one key says nothing about another.
pub(crate) fn next_key() -> u64 {
    // Process-wide, not per `Host`: the C callbacks find an instance by its key alone, so keys
    // must be unique across every `Host` in this process.
    static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
    static SECRET: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let secret = SECRET.get_or_init(Default::default);
    loop {
        let key = permute(secret, NEXT_KEY.fetch_add(1, Ordering::Relaxed));
        // 0 is never a key (the one counter that maps to it is skipped).
        if key != 0 {
            return key;
        }
    }
}

/// A permutation of `u64` keyed by `secret`: a Feistel network is invertible whatever its
/// round function, so distinct inputs never collide.
fn permute(secret: &impl BuildHasher, value: u64) -> u64 {
    let (mut left, mut right) = ((value >> 32) as u32, value as u32);
    for round in 0..4u32 {
        let mut hasher = secret.build_hasher();
        hasher.write_u32(round);
        hasher.write_u32(right);
        (left, right) = (right, left ^ hasher.finish() as u32);
    }
    (u64::from(left) << 32) | u64::from(right)
}

#[cfg(test)]
mod tests {
    use super::permute;
    use std::collections::HashSet;
    use std::collections::hash_map::RandomState;

    #[test]
    fn keys_are_distinct_and_do_not_follow_the_counter() {
        let secret = RandomState::new();
        let keys: Vec<u64> = (0..100_000).map(|n| permute(&secret, n)).collect();
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len(), "a permutation never collides");
        // Neighbouring counters give unrelated keys: about half the bits differ.
        let differing: u32 = keys.windows(2).map(|pair| (pair[0] ^ pair[1]).count_ones()).sum();
        let mean = f64::from(differing) / (keys.len() - 1) as f64;
        assert!((28.0..36.0).contains(&mean), "mean differing bits {mean}");
        // Another secret, other keys.
        let other = RandomState::new();
        assert_ne!(permute(&other, 1), permute(&secret, 1));
    }
}
