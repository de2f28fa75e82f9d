//! "Did you mean ...?" for near-miss attribute keys and field names.

/// The candidate closest to `typed`, if it is close enough to be a typo:
/// at most one edit per three characters of the candidate (at least one),
/// counting a swap of two neighbours as one edit and ignoring case.
pub(crate) fn closest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typed = typed.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&typed, &c.to_lowercase()), c))
        .filter(|&(d, c)| d <= (c.chars().count() / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and transpositions of adjacent characters each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::{closest, edit_distance};

    const KEYS: [&str; 5] = ["table", "schema", "unique", "id", "nulls_not_distinct"];

    #[test]
    fn distance_counts_a_swap_as_one_edit() {
        assert_eq!(edit_distance("uniqe", "unique"), 1);
        assert_eq!(edit_distance("tabel", "table"), 1);
        assert_eq!(edit_distance("index", "index"), 0);
        assert_eq!(edit_distance("", "id"), 2);
    }

    #[test]
    fn typos_find_their_key_and_strangers_find_none() {
        assert_eq!(closest("uniqe", KEYS), Some("unique"));
        assert_eq!(closest("Unique", KEYS), Some("unique"));
        assert_eq!(closest("tabel", KEYS), Some("table"));
        assert_eq!(closest("nulls_distinct", KEYS), Some("nulls_not_distinct"));
        assert_eq!(closest("primary_key", KEYS), None);
        assert_eq!(closest("x", KEYS), None);
    }
}
