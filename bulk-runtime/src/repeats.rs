//! Whether a long batch may repeat a key: a fixed-size Bloom filter over the
//! binary form of each row's key, filled while the rows stream out.
//!
//! A batch in which no key repeats needs no `DISTINCT ON` in the insert, and
//! without it the server sorts only the new rows by key, with no ordinal to
//! compare and no `Unique` step over them (7% of the insert at 100,000 rows
//! on the retweeter table). The filter can only err one way: it may take a
//! new key for a repeat (then the call keeps `DISTINCT ON`, as for any batch
//! with repeats), never a repeat for a new key. Its 2 MiB keep that false
//! alarm rare up to a few hundred thousand rows (the chance grows with the
//! batch: about 1 in 20 at 300,000 keys, nearly certain past a million),
//! and client memory flat at any batch size.
//!
//! Keys whose binary forms differ but which PostgreSQL holds equal (text
//! under a nondeterministic collation, `-0.0` and `0.0`, `1.0` and `1.00`,
//! jsonb written in another key order) would pass as distinct: for such key
//! types the filter is not used and the insert keeps `DISTINCT ON` (see
//! `call::copy::Before::bytewise_keys`), so that a repeat never reaches the
//! table's triggers.

/// Filter blocks of 256 bits (8 words of 32): each key sets one bit in each
/// word of one block (a split-block Bloom filter), so a key costs one cache line.
const BLOCKS: usize = 1 << 16;

/// Odd constants that spread a key's hash over the 8 words of its block.
const SALT: [u32; 8] =
    [0x47b6_137b, 0x4497_4d91, 0x8824_ad5b, 0xa2b7_289d, 0x7054_95c7, 0x2df1_424b, 0x9efc_4947, 0x5c6b_fb31];

/// The keys of one batch so far; see the module's documentation.
pub(crate) struct Repeats {
    blocks: Vec<[u32; 8]>,
    maybe: bool,
}

impl Repeats {
    pub(crate) fn new() -> Repeats {
        Repeats { blocks: vec![[0; 8]; BLOCKS], maybe: false }
    }

    /// Whether some key may have come twice. Once it is true, further keys
    /// need not be hashed.
    pub(crate) fn maybe(&self) -> bool {
        self.maybe
    }

    /// Records the key with hash `hash` (see [`key_hash`]); a key that could
    /// not be hashed (`None`) counts as a possible repeat.
    pub(crate) fn insert(&mut self, hash: Option<u64>) {
        let Some(hash) = hash else {
            self.maybe = true;
            return;
        };
        let block = &mut self.blocks[(((hash >> 32) * BLOCKS as u64) >> 32) as usize];
        let low = hash as u32;
        let mut seen = true;
        for (word, salt) in block.iter_mut().zip(SALT) {
            let bit = 1u32 << (low.wrapping_mul(salt) >> 27);
            seen &= *word & bit != 0;
            *word |= bit;
        }
        self.maybe |= seen;
    }
}

/// The hash of the key of one row in binary COPY format (field count, the
/// ordinal, then each column as a length and its bytes): the lengths and
/// bytes of the columns marked in `key`, in column order. A NULL (length -1)
/// hashes as itself, so two NULL keys are the same key, as in a
/// `NULLS NOT DISTINCT` unique index. Returns `None` for a malformed row.
pub(crate) fn key_hash(row: &[u8], key: &[bool]) -> Option<u64> {
    let mut at = 2 + 4 + 8;
    let mut h: u64 = 0;
    for &is_key in key {
        let len = i32::from_be_bytes(row.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let size = usize::try_from(len).unwrap_or(0);
        if is_key {
            h = mix(h, u64::from(len as u32));
            for chunk in row.get(at..at + size)?.chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                h = mix(h, u64::from_le_bytes(word));
            }
        }
        at += size;
    }
    // splitmix64's finalizer: every input bit reaches every output bit.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Some(h ^ (h >> 31))
}

fn mix(h: u64, v: u64) -> u64 {
    (h.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A COPY row: field count, ordinal, then the given fields.
    fn row(ord: i64, fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(fields.len() as i16 + 1).to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&ord.to_be_bytes());
        for f in fields {
            match f {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out
    }

    #[test]
    fn the_hash_covers_the_key_columns_only() {
        let key = [true, false, true];
        let h = |ord, fields: &[Option<&[u8]>]| key_hash(&row(ord, fields), &key).unwrap();
        let base = h(0, &[Some(b"a"), Some(b"x"), Some(b"b")]);
        assert_eq!(base, h(7, &[Some(b"a"), Some(b"other payload"), Some(b"b")]), "ordinal and payload ignored");
        assert_ne!(base, h(0, &[Some(b"a"), Some(b"x"), Some(b"c")]));
        assert_ne!(base, h(0, &[Some(b"ab"), Some(b"x"), Some(b"")]), "lengths separate the columns");
        assert_ne!(h(0, &[None, None, Some(b"b")]), h(0, &[Some(b""), None, Some(b"b")]), "NULL is not empty");
        assert_eq!(h(0, &[None, None, Some(b"b")]), h(1, &[None, Some(b"y"), Some(b"b")]), "NULL equals NULL");
        assert_eq!(key_hash(&row(0, &[Some(b"a")])[..10], &[true]), None, "a cut row");
    }

    #[test]
    fn distinct_keys_pass_and_a_repeat_is_caught() {
        let key = [true, true];
        let hash = |a: i64, b: i64| key_hash(&row(a, &[Some(&a.to_be_bytes()), Some(&b.to_be_bytes())]), &key);
        // 300,000 distinct keys, two bigints each, as in the retweeter table.
        let mut repeats = Repeats::new();
        for i in 0..300_000i64 {
            repeats.insert(hash(i % 1000, i));
        }
        assert!(!repeats.maybe(), "no false alarm at 300,000 keys (it is rare there, and the keys are fixed)");
        repeats.insert(hash(5, 5));
        assert!(repeats.maybe(), "a repeat is always caught");
        // Far past its size, the filter errs on the safe side.
        let mut full = Repeats::new();
        for i in 0..1_000_000i64 {
            full.insert(hash(i, -i));
        }
        assert!(full.maybe());
        let mut cut = Repeats::new();
        cut.insert(None);
        assert!(cut.maybe(), "a row that cannot be read counts as a repeat");
    }
}
