//! What a call did: one result type for the plain call and every option.

use std::fmt;

/// What a bulk call did: the plain call
/// ([`bulk_create_new`](crate::BulkCreateNew::bulk_create_new)) and every
/// call of the [`Bulk`](crate::Bulk) builder return it.
///
/// `offered = inserted + updated + unchanged + skipped`. `returned` holds
/// what the call was asked to return: nothing (`()`), the new rows
/// ([`returning_keys`](crate::Bulk::returning_keys)) or the skipped rows'
/// positions ([`returning_skipped`](crate::Bulk::returning_skipped)).
///
/// Displays as `2 of 4 records added` (`1 of 1 record added` for one row
/// offered), followed by `, 1 updated, 1 unchanged` for an upsert that found
/// stored keys, and by ` (recorded earlier)` for a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report<R = ()> {
    /// Rows offered (the length of the batch).
    pub offered: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Stored rows that an upsert updated (always 0 without
    /// [`upsert`](crate::Bulk::upsert)).
    pub updated: u64,
    /// Stored rows that an upsert left as they were, because
    /// [`only_if_changed`](crate::Upsert::only_if_changed) found them equal
    /// (always 0 without it).
    pub unchanged: u64,
    /// Rows not written. Without upsert: their key was already stored, or
    /// repeated in the batch. With upsert: their key was repeated in the
    /// batch and another row of it was kept ([`Keep`](crate::Keep)).
    pub skipped: u64,
    /// The counts were recorded by an earlier call with the same
    /// [`batch_id`](crate::Bulk::batch_id), and this call wrote nothing.
    /// `returned` is then empty: only the counts are recorded.
    pub replayed: bool,
    /// What the call returns besides the counts.
    pub returned: R,
}

impl<R> Report<R> {
    /// The counts alone, without what the call returned.
    pub fn outcome(&self) -> Report {
        let Report { offered, inserted, updated, unchanged, skipped, replayed, returned: _ } = *self;
        Report { offered, inserted, updated, unchanged, skipped, replayed, returned: () }
    }

    /// The counts with `returned` instead of what was returned.
    pub(crate) fn with<S>(self, returned: S) -> Report<S> {
        let Report { offered, inserted, updated, unchanged, skipped, replayed, returned: _ } = self;
        Report { offered, inserted, updated, unchanged, skipped, replayed, returned }
    }
}

impl Report {
    /// The counts of a call that inserted `inserted` of `offered` rows and
    /// skipped the others (none when a statement inserted more rows than
    /// offered, which the short path's `VALUES` statement checks).
    pub(crate) fn counts(offered: u64, inserted: u64) -> Report {
        Report { offered, inserted, skipped: offered.saturating_sub(inserted), ..Report::default() }
    }
}

impl<R> fmt::Display for Report<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let records = if self.offered == 1 { "record" } else { "records" };
        write!(f, "{} of {} {records} added", self.inserted, self.offered)?;
        if self.updated > 0 || self.unchanged > 0 {
            write!(f, ", {} updated, {} unchanged", self.updated, self.unchanged)?;
        }
        if self.replayed {
            f.write_str(" (recorded earlier)")?;
        }
        Ok(())
    }
}

/// Sums the counts of several calls (`replayed` if any was).
impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, rhs: Report) {
        self.offered += rhs.offered;
        self.inserted += rhs.inserted;
        self.updated += rhs.updated;
        self.unchanged += rhs.unchanged;
        self.skipped += rhs.skipped;
        self.replayed |= rhs.replayed;
    }
}
