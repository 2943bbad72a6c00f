//! The open sessions, paged through `message_session/list` (for
//! reconciliation), with the client's permit, token, renewal and retries;
//! `Pager`, the paging rule as plain state; and the lenient reading of a
//! page's entries (`ListedSession`). Never fetches a session's details:
//! list entries carry no participants, callers fetch them with `query`.
//!
//! What is asked: the API's own view (`user_type` 9, `user_no` `api`: the
//! only caller that is not one extension), every collection (`all`:
//! campaign sessions too, as events bring them), open sessions only
//! (`is_closed` 0), archived or not (`is_archived` 2), picked up or not
//! (`is_pickup` 0). The codes are the official page's; an entry marked
//! closed is left out anyway, in case a PBX reads them otherwise.
//!
//! Paging (the docs say only "pass the previous page's last `last_msg_id`
//! as `first_msg_id`"): each page after the first is asked with that
//! cursor. A listing ends on an empty page, or on one that lists nothing
//! new — not on a short one, since a PBX may cap `page_size` below what was
//! asked; that costs one more request per listing. Whether the cursor's own
//! session is repeated on the next page does not matter (sessions are kept
//! once, by id). A full page that lists nothing new means the PBX ignores
//! the cursor: the listing stops there, incomplete, as it does after
//! `max_pages` pages.

use std::collections::HashSet;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{PbxClient, PbxError};
use crate::metrics::PbxEndpoint;
use crate::session::{SessionId, integer};

/// One entry of a `message_session/list` page, as far as paging and
/// reconciliation need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedSession {
    pub id: SessionId,
    /// Its newest message: the cursor of the next page.
    pub last_msg_id: Option<i64>,
    /// `is_close` 1.
    pub closed: bool,
}

impl ListedSession {
    /// `None` for an entry without a usable `id`.
    fn decode(entry: &Value) -> Option<Self> {
        Some(Self {
            id: entry.get("id").and_then(integer).and_then(SessionId::new)?,
            last_msg_id: entry.get("last_msg_id").and_then(integer),
            closed: entry.get("is_close").and_then(integer) == Some(1),
        })
    }
}

/// Why a listing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListEnd {
    /// An empty page, or a short one with nothing new: every session seen.
    Complete,
    /// A full page listed nothing new: the PBX seems to ignore
    /// `first_msg_id`.
    Repeated,
    /// A full page's last entry had no `last_msg_id` to ask the next by.
    NoCursor,
    /// The page cap was reached.
    PageCap,
    /// Stopped by the caller (shutdown).
    Stopped,
}

impl ListEnd {
    pub fn is_complete(self) -> bool {
        self == ListEnd::Complete
    }

    /// Why the listing is incomplete, in words (`None` if it is complete).
    pub fn problem(self) -> Option<&'static str> {
        match self {
            ListEnd::Complete => None,
            ListEnd::Repeated => {
                Some("the PBX answered the same sessions again: it seems to ignore first_msg_id")
            }
            ListEnd::NoCursor => Some("a page's last session had no last_msg_id to page on"),
            ListEnd::PageCap => Some("the page cap was reached"),
            ListEnd::Stopped => Some("stopped before the end"),
        }
    }
}

/// The open sessions a listing found, each once, in the order listed.
#[derive(Clone, Debug)]
pub struct OpenSessions {
    pub sessions: Vec<SessionId>,
    /// `message_session/list` requests that answered.
    pub pages: u32,
    pub end: ListEnd,
}

/// The paging rule as plain state: feed it each page; it says whether to
/// ask for another (and with which cursor) or why the listing ended.
#[derive(Debug)]
pub struct Pager {
    page_size: usize,
    max_pages: u32,
    pages: u32,
    cursor: Option<i64>,
    seen: HashSet<SessionId>,
    open: Vec<SessionId>,
}

impl Pager {
    pub fn new(page_size: usize, max_pages: u32) -> Self {
        Self {
            page_size: page_size.max(1),
            max_pages: max_pages.max(1),
            pages: 0,
            cursor: None,
            seen: HashSet::new(),
            open: Vec::new(),
        }
    }

    /// The `first_msg_id` of the next page (`None`: the first page).
    pub fn cursor(&self) -> Option<i64> {
        self.cursor
    }

    /// Takes one page; `Some` once the listing has ended.
    pub fn take(&mut self, page: &[ListedSession]) -> Option<ListEnd> {
        self.pages += 1;
        let mut new = 0;
        for session in page {
            if self.seen.insert(session.id) {
                new += 1;
                if !session.closed {
                    self.open.push(session.id);
                }
            }
        }
        let full = page.len() >= self.page_size;
        if page.is_empty() || (new == 0 && !full) {
            return Some(ListEnd::Complete);
        }
        if new == 0 {
            return Some(ListEnd::Repeated);
        }
        if self.pages >= self.max_pages {
            return Some(ListEnd::PageCap);
        }
        match page.last().and_then(|last| last.last_msg_id) {
            Some(cursor) => {
                self.cursor = Some(cursor);
                None
            }
            None if full => Some(ListEnd::NoCursor),
            // A short page without a cursor: taken as the last.
            None => Some(ListEnd::Complete),
        }
    }

    /// The listing so far, ended by `end`.
    pub fn finish(self, end: ListEnd) -> OpenSessions {
        OpenSessions {
            sessions: self.open,
            pages: self.pages,
            end,
        }
    }
}

impl PbxClient {
    /// Pages through the open sessions (see the module docs) until the
    /// listing ends, `max_pages` pages were read, or `stop` is cancelled
    /// (checked between pages). A page that fails after the client's
    /// retries fails the listing.
    pub async fn list_open_sessions(
        &self,
        page_size: usize,
        max_pages: u32,
        stop: &CancellationToken,
    ) -> Result<OpenSessions, PbxError> {
        let mut pager = Pager::new(page_size, max_pages);
        loop {
            if stop.is_cancelled() {
                return Ok(pager.finish(ListEnd::Stopped));
            }
            let page = self.list_page(page_size, pager.cursor()).await?;
            if let Some(end) = pager.take(&page) {
                tracing::debug!(pages = pager.pages, end = ?end, "Listing of open sessions ended.");
                return Ok(pager.finish(end));
            }
        }
    }

    /// One page of open sessions after `cursor` (a `last_msg_id`). An entry
    /// without a usable id is left out; errcode 60001 is an empty page.
    pub async fn list_page(
        &self,
        page_size: usize,
        cursor: Option<i64>,
    ) -> Result<Vec<ListedSession>, PbxError> {
        let mut params = vec![
            ("page_size", page_size.to_string()),
            ("user_type", "9".to_owned()),
            ("user_no", "api".to_owned()),
            ("collection", "all".to_owned()),
            ("is_closed", "0".to_owned()),
            ("is_archived", "2".to_owned()),
            ("is_pickup", "0".to_owned()),
        ];
        if let Some(cursor) = cursor {
            params.push(("first_msg_id", cursor.to_string()));
        }
        let params = &params;
        let sent = self
            .request(PbxEndpoint::MessageSessionList, &[], |token| async move {
                self.api.message_session_list(&token, params).await
            })
            .await;
        let entries = match sent {
            Ok(sent) => sent.answer,
            Err(super::error::CallError::Failed(PbxError::NotFound)) => Vec::new(),
            Err(failed) => return Err(failed.into()),
        };
        let page: Vec<ListedSession> = entries
            .iter()
            .filter_map(|entry| {
                let listed = ListedSession::decode(entry);
                if listed.is_none() {
                    tracing::debug!(%entry, "A listed session without a usable id; ignored.");
                }
                listed
            })
            .collect();
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn listed(id: i64) -> ListedSession {
        ListedSession {
            id: SessionId::new(id).unwrap(),
            last_msg_id: Some(id * 10),
            closed: false,
        }
    }

    /// Pages a PBX holding sessions 1..=n newest first, each page built by
    /// `serve(cursor)`, to the end; the sessions found, pages read, end.
    fn page_through(
        page_size: usize,
        serve: impl Fn(Option<i64>) -> Vec<ListedSession>,
    ) -> (Vec<i64>, u32, ListEnd) {
        let mut pager = Pager::new(page_size, 1000);
        loop {
            let page = serve(pager.cursor());
            if let Some(end) = pager.take(&page) {
                let found = pager.finish(end);
                let mut ids: Vec<i64> = found.sessions.iter().map(|id| id.get()).collect();
                ids.sort_unstable();
                return (ids, found.pages, found.end);
            }
        }
    }

    /// Sessions 1..=n, newest (highest) first, those the cursor admits.
    fn descending(
        n: i64,
        admits: impl Fn(i64, i64) -> bool,
    ) -> impl Fn(Option<i64>) -> Vec<ListedSession> {
        move |cursor| {
            (1..=n)
                .rev()
                .map(listed)
                .filter(|s| cursor.is_none_or(|c| admits(s.last_msg_id.unwrap(), c)))
                .collect()
        }
    }

    fn pages_of(
        size: usize,
        serve: impl Fn(Option<i64>) -> Vec<ListedSession>,
    ) -> impl Fn(Option<i64>) -> Vec<ListedSession> {
        move |cursor| serve(cursor).into_iter().take(size).collect()
    }

    #[test]
    fn a_pbx_paging_after_the_cursor_is_read_to_its_empty_page() {
        let (ids, pages, end) = page_through(3, pages_of(3, descending(10, |m, c| m < c)));
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        assert_eq!(
            (pages, end),
            (5, ListEnd::Complete),
            "4 pages and the empty one"
        );
    }

    #[test]
    fn a_pbx_repeating_the_cursors_session_is_read_once_each() {
        let (ids, pages, end) = page_through(3, pages_of(3, descending(10, |m, c| m <= c)));
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        assert_eq!(end, ListEnd::Complete);
        assert_eq!(
            pages, 6,
            "3 + 2 + 2 + 2 + 1 new, then the cursor's session alone"
        );
    }

    #[test]
    fn a_pbx_ignoring_the_cursor_stops_after_one_repeat() {
        let (ids, pages, end) = page_through(3, pages_of(3, descending(10, |_, _| true)));
        assert_eq!(ids, [8, 9, 10]);
        assert_eq!((pages, end), (2, ListEnd::Repeated));
        // Fewer sessions than a page: the repeat is short, nothing was missed.
        let (ids, _, end) = page_through(3, pages_of(3, descending(2, |_, _| true)));
        assert_eq!((ids, end), (vec![1, 2], ListEnd::Complete));
    }

    #[test]
    fn a_pbx_capping_the_page_size_is_still_read_to_the_end() {
        let (ids, _, end) = page_through(100, pages_of(4, descending(10, |m, c| m < c)));
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        assert_eq!(end, ListEnd::Complete);
    }

    #[test]
    fn closed_sessions_are_left_out_and_entries_without_an_id_ignored() {
        let mut pager = Pager::new(10, 10);
        let closed = ListedSession {
            closed: true,
            ..listed(2)
        };
        assert_eq!(pager.take(&[listed(3), closed, listed(1)]), None);
        assert_eq!(pager.cursor(), Some(10));
        assert_eq!(pager.take(&[]), Some(ListEnd::Complete));
        let ids: Vec<i64> = pager
            .finish(ListEnd::Complete)
            .sessions
            .iter()
            .map(|i| i.get())
            .collect();
        assert_eq!(ids, [3, 1]);
        assert_eq!(ListedSession::decode(&json!({"last_msg_id": 5})), None);
        assert_eq!(
            ListedSession::decode(&json!({"id": "7", "last_msg_id": "70", "is_close": "1"})),
            Some(ListedSession {
                id: SessionId::new(7).unwrap(),
                last_msg_id: Some(70),
                closed: true
            })
        );
    }

    #[test]
    fn the_page_cap_and_a_missing_cursor_end_a_listing_incomplete() {
        let (_, pages, end) = {
            let mut pager = Pager::new(2, 3);
            let serve = pages_of(2, descending(100, |m, c| m < c));
            loop {
                if let Some(end) = pager.take(&serve(pager.cursor())) {
                    break (0, pager.pages, end);
                }
            }
        };
        assert_eq!((pages, end), (3, ListEnd::PageCap));
        let no_cursor = ListedSession {
            last_msg_id: None,
            ..listed(4)
        };
        assert_eq!(
            Pager::new(2, 9).take(&[listed(5), no_cursor]),
            Some(ListEnd::NoCursor)
        );
        assert_eq!(
            Pager::new(3, 9).take(&[listed(5), no_cursor]),
            Some(ListEnd::Complete)
        );
    }
}
