//! `AckRuns`: the delivery-tag bookkeeping of one consuming channel, as
//! plain state (no I/O, no clock), so that one `basic.ack` with `multiple`
//! can settle a whole run of finished deliveries.
//!
//! A `multiple` ack at tag `t` acks *every* delivery on the channel up to
//! `t` that the broker still counts as unacked. So a run may end at `t` only
//! when every earlier tag still open on the channel is finished and waiting
//! for its ack: never over a delivery still being processed, nor over one
//! whose own frame (a nack, a single ack, another run's ack) is still on its
//! way, because frames sent concurrently may reach the socket in any order
//! and a tag acked twice closes the channel (`PRECONDITION_FAILED`).
//!
//! The rule, kept after every call: no waiting ack lies below the lowest
//! *blocking* tag (taken and unsettled, or with a frame on its way). A call
//! that would break it returns the `Run` to send at once instead.
//!
//! It never decides how long an ack may wait (the caller does, see
//! `acks`), and never sends anything. Each call is O(log n) per tag.

use std::collections::{BTreeMap, BTreeSet};

/// The delivery tags of one channel: taken, finished, or being settled.
#[derive(Debug)]
pub(super) struct AckRuns<A> {
    /// Taken from the channel and not yet finished.
    unsettled: BTreeSet<u64>,
    /// With a frame on its way that settles it: it blocks runs until `sent`.
    sending: BTreeSet<u64>,
    /// Finished and waiting for an ack, each above the lowest blocking tag;
    /// the value is the caller's handle to ack it with.
    waiting: BTreeMap<u64, A>,
}

/// One ack frame to send now: at `tag`, with `multiple` if `covered` is not
/// empty. `tag` blocks later runs until the caller reports it `sent`.
#[derive(Debug)]
pub(super) struct Run<A> {
    pub tag: u64,
    /// The handle of `tag` itself: the one to send the frame with.
    pub handle: A,
    /// The handles of the earlier waiting tags the frame also acks: they
    /// must never be used to ack again.
    pub covered: Vec<A>,
}

impl<A> Default for AckRuns<A> {
    fn default() -> Self {
        Self {
            unsettled: BTreeSet::new(),
            sending: BTreeSet::new(),
            waiting: BTreeMap::new(),
        }
    }
}

impl<A> AckRuns<A> {
    /// A delivery was taken from the channel with this tag. Every delivery
    /// taken must be registered, in the order taken, before any later tag
    /// finishes: a tag never registered could be covered by a run.
    pub(super) fn taken(&mut self, tag: u64) {
        self.unsettled.insert(tag);
    }

    /// The delivery is done and may be acked: it waits, with `handle`, for
    /// a run to cover it. Returns the run to send now, if its finishing made
    /// one (it then covers `tag`). `Err(handle)` if `tag` is not taken and
    /// unsettled: nothing is recorded, and nothing must be sent for it.
    pub(super) fn ready(&mut self, tag: u64, handle: A) -> Result<Option<Run<A>>, A> {
        if !self.unsettled.remove(&tag) {
            return Err(handle);
        }
        self.waiting.insert(tag, handle);
        Ok(self.run())
    }

    /// A waiting ack may wait no longer: takes it out to be sent alone (it
    /// blocks later runs until `sent`). `None` if it is not waiting any
    /// more (a run took it).
    pub(super) fn overdue(&mut self, tag: u64) -> Option<A> {
        let handle = self.waiting.remove(&tag)?;
        self.sending.insert(tag);
        Some(handle)
    }

    /// The frame that settles `tag` (a nack or reject of it, its ack sent
    /// alone, or a run's ack at `tag`) has been sent: `tag` is closed.
    /// Returns the run that this unblocked, if any. A tag settled without
    /// `ready` (a nack) goes straight here.
    pub(super) fn sent(&mut self, tag: u64) -> Option<Run<A>> {
        self.sending.remove(&tag);
        self.unsettled.remove(&tag);
        self.run()
    }

    /// Tags taken and not settled yet (waiting acks included).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.unsettled.len() + self.sending.len() + self.waiting.len()
    }

    /// The run every waiting ack below the lowest blocking tag makes, taken
    /// out of `waiting`; its own tag is then sending.
    fn run(&mut self) -> Option<Run<A>> {
        let blocking = match (self.unsettled.first(), self.sending.first()) {
            (Some(&a), Some(&b)) => Some(a.min(b)),
            (a, b) => a.or(b).copied(),
        };
        let mut covered = Vec::new();
        let mut last = None;
        while let Some(entry) = self.waiting.first_entry() {
            if blocking.is_some_and(|blocking| *entry.key() > blocking) {
                break;
            }
            covered.extend(last.take().map(|(_, handle)| handle));
            last = Some(entry.remove_entry());
        }
        let (tag, handle) = last?;
        self.sending.insert(tag);
        Some(Run {
            tag,
            handle,
            covered,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::{AckRuns, Run};

    fn taken(tags: std::ops::RangeInclusive<u64>) -> AckRuns<u64> {
        let mut runs = AckRuns::default();
        for tag in tags {
            runs.taken(tag);
        }
        runs
    }

    /// A run as (its tag, the tags it covers besides).
    fn shape(run: Option<Run<u64>>) -> Option<(u64, Vec<u64>)> {
        run.map(|run| {
            assert_eq!(run.handle, run.tag, "the run's own handle");
            (run.tag, run.covered)
        })
    }

    #[test]
    fn deliveries_finished_in_order_are_acked_one_by_one_at_once() {
        let mut runs = taken(1..=3);
        for tag in 1..=3 {
            assert_eq!(shape(runs.ready(tag, tag).unwrap()), Some((tag, vec![])));
            assert_eq!(shape(runs.sent(tag)), None);
        }
        assert_eq!(runs.open(), 0);
    }

    #[test]
    fn later_deliveries_wait_for_the_first_and_then_go_in_one_frame() {
        let mut runs = taken(1..=5);
        for tag in [3, 2, 5, 4] {
            assert_eq!(
                shape(runs.ready(tag, tag).unwrap()),
                None,
                "tag 1 is unsettled"
            );
        }
        assert_eq!(
            shape(runs.ready(1, 1).unwrap()),
            Some((5, vec![1, 2, 3, 4]))
        );
        assert_eq!(shape(runs.sent(5)), None);
        assert_eq!(runs.open(), 0);
    }

    #[test]
    fn a_run_stops_below_the_first_gap() {
        let mut runs = taken(1..=6);
        for tag in [2, 3, 5, 6] {
            assert_eq!(shape(runs.ready(tag, tag).unwrap()), None);
        }
        assert_eq!(shape(runs.ready(1, 1).unwrap()), Some((3, vec![1, 2])));
        assert_eq!(shape(runs.sent(3)), None, "tag 4 is still unsettled");
        assert_eq!(shape(runs.ready(4, 4).unwrap()), Some((6, vec![4, 5])));
    }

    #[test]
    fn a_nack_in_the_middle_is_never_covered_and_counts_as_settled_once_sent() {
        let mut runs = taken(1..=5);
        for tag in [1, 2] {
            assert_eq!(shape(runs.ready(tag, tag).unwrap()), Some((tag, vec![])));
            assert_eq!(shape(runs.sent(tag)), None);
        }
        // 3 is being nacked; 4 and 5 finish meanwhile.
        assert_eq!(shape(runs.ready(4, 4).unwrap()), None);
        assert_eq!(shape(runs.ready(5, 5).unwrap()), None);
        // Only once the nack is sent may a run pass over 3.
        assert_eq!(shape(runs.sent(3)), Some((5, vec![4])));
    }

    #[test]
    fn a_run_waits_for_an_earlier_frame_still_on_its_way() {
        let mut runs = taken(1..=4);
        assert_eq!(shape(runs.ready(2, 2).unwrap()), None);
        assert_eq!(shape(runs.ready(1, 1).unwrap()), Some((2, vec![1])));
        // The frame at 2 is not sent yet: 3 and 4 wait behind it.
        assert_eq!(shape(runs.ready(4, 4).unwrap()), None);
        assert_eq!(shape(runs.ready(3, 3).unwrap()), None);
        assert_eq!(shape(runs.sent(2)), Some((4, vec![3])));
    }

    #[test]
    fn an_overdue_ack_goes_alone_and_a_slow_delivery_holds_back_no_later_one() {
        let mut runs = taken(1..=4);
        assert_eq!(shape(runs.ready(3, 3).unwrap()), None, "1 is slow");
        assert_eq!(runs.overdue(3), Some(3));
        assert_eq!(runs.overdue(3), None, "taken out once");
        assert_eq!(shape(runs.ready(2, 2).unwrap()), None);
        assert_eq!(shape(runs.sent(3)), None, "1 still blocks 2");
        assert_eq!(shape(runs.ready(1, 1).unwrap()), Some((2, vec![1])));
        assert_eq!(shape(runs.sent(2)), None);
        assert_eq!(shape(runs.ready(4, 4).unwrap()), Some((4, vec![])));
    }

    #[test]
    fn an_ack_a_run_took_is_not_overdue() {
        let mut runs = taken(1..=2);
        assert_eq!(shape(runs.ready(2, 2).unwrap()), None);
        assert_eq!(shape(runs.ready(1, 1).unwrap()), Some((2, vec![1])));
        assert_eq!(runs.overdue(2), None);
        assert_eq!(runs.overdue(1), None);
    }

    #[test]
    fn a_tag_not_taken_or_settled_twice_is_refused() {
        let mut runs = taken(1..=2);
        assert_eq!(runs.ready(7, 7).unwrap_err(), 7, "never taken");
        assert!(runs.ready(2, 2).unwrap().is_none());
        assert_eq!(runs.ready(2, 2).unwrap_err(), 2, "already waiting");
        assert!(runs.sent(1).is_some(), "1's nack unblocks 2");
        assert_eq!(runs.ready(1, 1).unwrap_err(), 1, "nacked already");
        assert_eq!(runs.open(), 1, "2 is sending");
    }

    /// The broker's side: which tags are unacked, and what each frame does
    /// to them. A frame acking or nacking a tag that is no longer unacked
    /// is the channel error the ledger must never cause.
    struct Broker {
        unacked: BTreeSet<u64>,
        acked: BTreeSet<u64>,
        nacked: BTreeSet<u64>,
    }

    enum Frame {
        Ack { tag: u64, multiple: bool },
        Nack(u64),
    }

    impl Broker {
        fn receive(&mut self, frame: &Frame, meant_to_nack: &BTreeSet<u64>) {
            let (tag, multiple, nack) = match *frame {
                Frame::Ack { tag, multiple } => (tag, multiple, false),
                Frame::Nack(tag) => (tag, false, true),
            };
            assert!(self.unacked.contains(&tag), "unknown delivery tag {tag}");
            let settled: Vec<u64> = if multiple {
                self.unacked.range(..=tag).copied().collect()
            } else {
                vec![tag]
            };
            for t in settled {
                self.unacked.remove(&t);
                if nack {
                    self.nacked.insert(t);
                } else {
                    assert!(
                        !meant_to_nack.contains(&t),
                        "tag {t} acked, meant to be returned"
                    );
                    self.acked.insert(t);
                }
            }
        }
    }

    /// A small xorshift, so the scenarios are the same on every run.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Thousands of random interleavings of finishing, nacking, timing out
    /// and frames arriving at the broker in any order among those sent
    /// concurrently: the broker never sees a tag twice or an unfinished
    /// tag acked, every delivery ends settled once, and fewer frames than
    /// deliveries are sent.
    #[test]
    fn no_interleaving_acks_an_unfinished_tag_or_any_tag_twice() {
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        let (mut frames_sent, mut deliveries) = (0, 0);
        for _ in 0..2_000 {
            let n = 1 + dice.below(12) as u64;
            deliveries += n;
            let mut runs = taken(1..=n);
            let mut broker = Broker {
                unacked: (1..=n).collect(),
                acked: BTreeSet::new(),
                nacked: BTreeSet::new(),
            };
            let meant_to_nack: BTreeSet<u64> = (1..=n).filter(|_| dice.below(5) == 0).collect();
            let mut unfinished: Vec<u64> = (1..=n).collect();
            let mut waiting: Vec<u64> = Vec::new();
            // Frames sent and not yet received, by the tag reported `sent`.
            let mut in_flight: BTreeMap<u64, Frame> = BTreeMap::new();
            let send = |run: Option<Run<u64>>, in_flight: &mut BTreeMap<u64, Frame>| {
                if let Some(run) = run {
                    let multiple = !run.covered.is_empty();
                    in_flight.insert(
                        run.tag,
                        Frame::Ack {
                            tag: run.tag,
                            multiple,
                        },
                    );
                }
            };
            while !(unfinished.is_empty() && waiting.is_empty() && in_flight.is_empty()) {
                match dice.below(3) {
                    0 if !unfinished.is_empty() => {
                        let tag = unfinished.swap_remove(dice.below(unfinished.len()));
                        if meant_to_nack.contains(&tag) {
                            in_flight.insert(tag, Frame::Nack(tag));
                        } else {
                            waiting.push(tag);
                            send(runs.ready(tag, tag).unwrap(), &mut in_flight);
                        }
                    }
                    1 if !waiting.is_empty() => {
                        let tag = waiting.swap_remove(dice.below(waiting.len()));
                        if let Some(handle) = runs.overdue(tag) {
                            assert_eq!(handle, tag);
                            in_flight.insert(
                                tag,
                                Frame::Ack {
                                    tag,
                                    multiple: false,
                                },
                            );
                        }
                    }
                    _ if !in_flight.is_empty() => {
                        let tags: Vec<u64> = in_flight.keys().copied().collect();
                        let tag = tags[dice.below(tags.len())];
                        let frame = in_flight.remove(&tag).unwrap();
                        broker.receive(&frame, &meant_to_nack);
                        frames_sent += u64::from(matches!(frame, Frame::Ack { .. }));
                        send(runs.sent(tag), &mut in_flight);
                    }
                    _ => {}
                }
                waiting.retain(|tag| broker.unacked.contains(tag));
            }
            assert!(broker.unacked.is_empty(), "every delivery settled");
            assert_eq!(broker.nacked, meant_to_nack);
            assert_eq!(runs.open(), 0);
        }
        assert!(
            frames_sent < deliveries * 3 / 4,
            "{frames_sent} ack frames for {deliveries} deliveries"
        );
    }
}
