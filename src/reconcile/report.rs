//! `ReconcileReport`: what one run found and did, session by session where
//! it matters (added, changed, missing, failed) and in counts elsewhere;
//! how it ended (`result`); and its text for people (`Display`: counts, then
//! the ids added and changed, a limited number of each). Plain data: no I/O.

use std::fmt;

use crate::metrics::ReconcileResult;
use crate::pbx::{ListEnd, OpenSessions};
use crate::session::SessionId;

/// Ids printed per kind at most.
const IDS_SHOWN: usize = 20;

#[derive(Clone, Debug)]
pub struct ReconcileReport {
    /// `message_session/list` pages read.
    pub pages: u32,
    /// Why the listing ended.
    pub end: ListEnd,
    /// Open sessions the listing found.
    pub listed: usize,
    /// Sessions stored as waiting that the listing did not show, fetched
    /// again (only after a complete listing).
    pub rechecked: usize,
    /// Sessions that had no row.
    pub added: Vec<SessionId>,
    /// Sessions whose stored Session_Info differed (or that were marked
    /// missing).
    pub changed: Vec<SessionId>,
    /// Sessions stored as the PBX describes them (or newer).
    pub unchanged: usize,
    /// Sessions the PBX then said do not exist.
    pub missing: Vec<SessionId>,
    /// Sessions that could not be fetched or written, and why.
    pub failed: Vec<(SessionId, String)>,
    /// A stop came before every session was written.
    pub stopped: bool,
}

impl ReconcileReport {
    pub(super) fn new(listing: &OpenSessions) -> Self {
        Self {
            pages: listing.pages,
            end: listing.end,
            listed: listing.sessions.len(),
            rechecked: 0,
            added: Vec::new(),
            changed: Vec::new(),
            unchanged: 0,
            missing: Vec::new(),
            failed: Vec::new(),
            stopped: false,
        }
    }

    /// Every open session listed, fetched and written.
    pub fn is_complete(&self) -> bool {
        self.end.is_complete() && !self.stopped && self.failed.is_empty()
    }

    /// How the run ended, as the metric and `reconcile_runs` say it.
    pub fn result(&self) -> ReconcileResult {
        if self.is_complete() {
            ReconcileResult::Done
        } else {
            ReconcileResult::Incomplete
        }
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "listed {} open sessions in {} pages; rechecked {} stored as waiting but no longer listed open",
            self.listed, self.pages, self.rechecked
        )?;
        writeln!(
            f,
            "added {}, changed {}, unchanged {}, missing {}, failed {}",
            self.added.len(),
            self.changed.len(),
            self.unchanged,
            self.missing.len(),
            self.failed.len()
        )?;
        for (kind, ids) in [
            ("added", &self.added),
            ("changed", &self.changed),
            ("missing", &self.missing),
        ] {
            if !ids.is_empty() {
                writeln!(f, "{kind}: {}", Ids(ids))?;
            }
        }
        for (id, why) in self.failed.iter().take(IDS_SHOWN) {
            writeln!(f, "FAILED: session {id}: {why}")?;
        }
        if self.failed.len() > IDS_SHOWN {
            writeln!(f, "FAILED: {} more", self.failed.len() - IDS_SHOWN)?;
        }
        if let Some(problem) = self.end.problem() {
            writeln!(f, "INCOMPLETE: {problem}")?;
        } else if self.stopped {
            writeln!(f, "INCOMPLETE: stopped before every session was written")?;
        }
        Ok(())
    }
}

/// Ids in order, the first `IDS_SHOWN` of them: `3, 6, 9 (and 4 more)`.
struct Ids<'a>(&'a [SessionId]);

impl fmt::Display for Ids<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.iter().take(IDS_SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}")?;
        }
        if self.0.len() > IDS_SHOWN {
            write!(f, " (and {} more)", self.0.len() - IDS_SHOWN)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::RangeInclusive<i64>) -> Vec<SessionId> {
        range.filter_map(SessionId::new).collect()
    }

    fn report(end: ListEnd) -> ReconcileReport {
        ReconcileReport::new(&OpenSessions {
            sessions: ids(1..=30),
            pages: 2,
            end,
        })
    }

    #[test]
    fn the_text_gives_the_counts_and_a_limited_list_of_ids() {
        let mut report = report(ListEnd::Complete);
        report.added = ids(1..=25);
        report.changed = ids(26..=27);
        report.unchanged = 3;
        let text = report.to_string();
        assert!(
            text.starts_with("listed 30 open sessions in 2 pages;"),
            "{text}"
        );
        assert!(
            text.contains("added 25, changed 2, unchanged 3, missing 0, failed 0"),
            "{text}"
        );
        assert!(text.contains("added: 1, 2, 3,"), "{text}");
        assert!(text.contains("20 (and 5 more)\n"), "{text}");
        assert!(text.contains("changed: 26, 27\n"), "{text}");
        assert!(!text.contains("INCOMPLETE"), "{text}");
        assert_eq!(report.result(), ReconcileResult::Done);
    }

    #[test]
    fn a_failure_a_stop_or_a_listing_cut_short_is_incomplete() {
        let mut failed = report(ListEnd::Complete);
        failed.failed.push((ids(5..=5)[0], "PBX rejected".into()));
        assert_eq!(failed.result(), ReconcileResult::Incomplete);
        assert!(
            failed
                .to_string()
                .contains("FAILED: session 5: PBX rejected")
        );
        let mut stopped = report(ListEnd::Complete);
        stopped.stopped = true;
        assert_eq!(stopped.result(), ReconcileResult::Incomplete);
        let repeated = report(ListEnd::Repeated);
        assert_eq!(repeated.result(), ReconcileResult::Incomplete);
        assert!(
            repeated
                .to_string()
                .contains("INCOMPLETE: the PBX answered the same sessions again")
        );
    }
}
