//! The order in which a bench run's events arrive: `interleaved` (a
//! contact center's backlog: a few conversations active at once, their
//! messages alternating) and `back_to_back` (each session's messages
//! consecutive). Session ids only; `body` makes an event of one.

use std::collections::HashSet;

/// A run's events, as the session each belongs to, in publishing order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub sessions: Vec<u64>,
}

impl Workload {
    /// `events` over `sessions` sessions (ids from 1), `active` of them at
    /// once: sessions 1..=active each get one event, then again, for as
    /// many rounds as each session has events (`events / sessions`), then
    /// the next `active` sessions. The last group may be smaller; when
    /// `events` is not a multiple of `sessions`, the order starts over
    /// until there are `events`.
    pub fn interleaved(events: u64, sessions: u64, active: u64) -> Self {
        let sessions = sessions.max(1);
        let active = active.clamp(1, sessions);
        let rounds = (events / sessions).max(1);
        let mut order = Vec::with_capacity(events as usize);
        'filled: loop {
            let mut first = 1;
            while first <= sessions {
                let last = (first + active - 1).min(sessions);
                for _ in 0..rounds {
                    for session in first..=last {
                        if order.len() as u64 == events {
                            break 'filled;
                        }
                        order.push(session);
                    }
                }
                first = last + 1;
            }
        }
        Self { sessions: order }
    }

    /// `events` over `sessions` sessions (ids from 1), each session's
    /// `events / sessions` events consecutive.
    pub fn back_to_back(events: u64, sessions: u64) -> Self {
        let sessions = sessions.max(1);
        let burst = (events / sessions).max(1);
        Self {
            sessions: (0..events).map(|n| 1 + (n / burst) % sessions).collect(),
        }
    }

    pub fn events(&self) -> u64 {
        self.sessions.len() as u64
    }

    /// Sessions with at least one event.
    pub fn distinct_sessions(&self) -> u64 {
        self.sessions.iter().collect::<HashSet<_>>().len() as u64
    }

    /// The new-message events, in order.
    pub fn bodies(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.sessions
            .iter()
            .enumerate()
            .map(|(n, &session)| body(session, n as u64))
    }
}

/// A new-message event (30031) of `session`, message `msg_id`.
pub fn body(session: u64, msg_id: u64) -> Vec<u8> {
    format!(
        r#"{{"type":30031,"sn":"bench","msg":{{"session_id":{session},"msg_id":{msg_id},"msg_type":0}}}}"#
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, parse};

    #[test]
    fn interleaved_sessions_take_turns_in_groups_of_the_active_ones() {
        let order = Workload::interleaved(12, 4, 2).sessions;
        assert_eq!(order, [1, 2, 1, 2, 1, 2, 3, 4, 3, 4, 3, 4]);
    }

    #[test]
    fn the_default_interleaving_is_fifty_at_once_ten_rounds_each() {
        let workload = Workload::interleaved(100_000, 10_000, 50);
        assert_eq!(workload.events(), 100_000);
        assert_eq!(workload.distinct_sessions(), 10_000);
        let order = &workload.sessions;
        let first_round: Vec<u64> = (1..=50).collect();
        assert_eq!(order[..50], first_round[..]);
        assert_eq!(order[50..100], first_round[..]);
        assert_eq!(order[450..500], first_round[..]);
        let second_group: Vec<u64> = (51..=100).collect();
        assert_eq!(order[500..550], second_group[..]);
        assert_eq!(order[99_999], 10_000);
        // Every session's ten events are spread over 10 rounds of 50.
        let positions: Vec<usize> = (0..order.len()).filter(|&i| order[i] == 7).collect();
        assert_eq!(positions, (0..10).map(|r| 6 + 50 * r).collect::<Vec<_>>());
    }

    #[test]
    fn a_smaller_last_group_and_a_remainder_still_give_every_event() {
        let order = Workload::interleaved(7, 3, 2).sessions;
        // Two rounds each: [1,2,1,2], then [3,3]; then from the start.
        assert_eq!(order, [1, 2, 1, 2, 3, 3, 1]);
        assert_eq!(Workload::interleaved(5, 10, 50).sessions, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn back_to_back_sessions_have_their_events_consecutive() {
        let workload = Workload::back_to_back(9, 3);
        assert_eq!(workload.sessions, [1, 1, 1, 2, 2, 2, 3, 3, 3]);
        assert_eq!(workload.distinct_sessions(), 3);
    }

    #[test]
    fn each_body_is_a_message_event_of_its_session() {
        let bodies: Vec<Vec<u8>> = Workload::interleaved(4, 2, 2).bodies().collect();
        let ids: Vec<i64> = bodies
            .iter()
            .map(|b| match parse(b, &crate::defaults::EVENT_TYPES) {
                Ok(Event::Message(message)) => message.session_id.get(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2, 1, 2]);
    }
}
