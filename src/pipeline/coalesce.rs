//! The coalescing rule, as plain state: per session, the events waiting for
//! a fetch and whether one is queued or in flight. No tasks, no I/O; the
//! fetchers drive it under one lock.
//!
//! An event is covered only by a fetch that *starts* after it arrived:
//! events arriving before a queued fetch starts ride on it; events arriving
//! while it is in flight wait for one follow-up, queued when it answers.

use std::collections::HashMap;

use crate::session::SessionId;

/// The sessions with events not yet covered by an answer.
pub(super) struct Slots<T> {
    slots: HashMap<SessionId, Slot<T>>,
}

struct Slot<T> {
    /// Arrived, not yet covered by a started fetch.
    waiting: Vec<T>,
    /// A fetch is queued and has not started.
    queued: bool,
    /// A fetch is in flight.
    fetching: bool,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            slots: HashMap::new(),
        }
    }
}

impl<T> Slots<T> {
    /// An event arrived for `id`. `true` if a fetch must be queued for it
    /// (none is queued or in flight).
    pub(super) fn arrive(&mut self, id: SessionId, ticket: T) -> bool {
        let slot = self.slots.entry(id).or_insert_with(|| Slot {
            waiting: Vec::new(),
            queued: false,
            fetching: false,
        });
        slot.waiting.push(ticket);
        let start = !slot.queued && !slot.fetching;
        slot.queued |= start;
        start
    }

    /// A fetch of `id` starts now: it covers every event that arrived so far.
    pub(super) fn start(&mut self, id: SessionId) -> Vec<T> {
        match self.slots.get_mut(&id) {
            Some(slot) => {
                slot.queued = false;
                slot.fetching = true;
                std::mem::take(&mut slot.waiting)
            }
            None => Vec::new(),
        }
    }

    /// The fetch of `id` answered. `true` if events arrived meanwhile and a
    /// follow-up fetch must be queued for them.
    pub(super) fn answered(&mut self, id: SessionId) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        slot.fetching = false;
        if slot.waiting.is_empty() {
            self.slots.remove(&id);
            false
        } else {
            slot.queued = true;
            true
        }
    }

    /// Sessions with events waiting or a fetch queued or in flight.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> SessionId {
        SessionId::new(n).expect("positive")
    }

    #[test]
    fn the_first_event_queues_a_fetch_and_later_ones_ride_on_it() {
        let mut slots = Slots::default();
        assert!(slots.arrive(id(1), "a"));
        assert!(!slots.arrive(id(1), "b"));
        assert_eq!(slots.start(id(1)), vec!["a", "b"]);
        assert!(!slots.answered(id(1)));
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn events_during_a_fetch_wait_for_exactly_one_follow_up() {
        let mut slots = Slots::default();
        assert!(slots.arrive(id(1), 1));
        assert_eq!(slots.start(id(1)), vec![1]);
        assert!(
            !slots.arrive(id(1), 2),
            "no second fetch while one is in flight"
        );
        assert!(!slots.arrive(id(1), 3));
        assert!(slots.answered(id(1)), "one follow-up for both");
        assert!(!slots.arrive(id(1), 4), "rides on the queued follow-up");
        assert_eq!(slots.start(id(1)), vec![2, 3, 4]);
        assert!(!slots.answered(id(1)));
    }

    #[test]
    fn sessions_are_independent() {
        let mut slots = Slots::default();
        assert!(slots.arrive(id(1), 1));
        assert!(slots.arrive(id(2), 2));
        assert_eq!(slots.start(id(2)), vec![2]);
        assert_eq!(slots.start(id(1)), vec![1]);
        assert_eq!(slots.len(), 2);
    }
}
