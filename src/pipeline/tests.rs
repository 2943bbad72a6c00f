//! The pipeline with fake ports under paused time: the coalescing rule,
//! batching, and that every event comes back whatever a stage does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::processing::{Answer, BatchResult, FetchError, WriteError};
use crate::session::{FetchedSession, SessionInfo};

/// What happened, in order: `fetch <session> #<call>`, `answered <session>
/// #<call>`, `write <session> #<call>` (the call whose answer was written)
/// and the test's own entries.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    fn position(&self, entry: &str) -> usize {
        let entries = self.0.lock().unwrap();
        entries
            .iter()
            .position(|e| e == entry)
            .unwrap_or_else(|| panic!("`{entry}` not in {entries:?}"))
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    Fail,
    Panic,
    Omit,
}

/// A PBX that answers every session after `latency`, numbering its calls;
/// the answer's time is the call number, so later calls are newer.
struct FakeSource {
    latency: Duration,
    calls: AtomicUsize,
    /// Per call: when it started and how many sessions it asked for.
    batches: Mutex<Vec<(tokio::time::Instant, usize)>>,
    log: Log,
    scripted: Mutex<HashMap<i64, Behaviour>>,
}

impl SessionSource for FakeSource {
    async fn fetch(&self, ids: &[SessionId]) -> Vec<(SessionId, Result<Answer, FetchError>)> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.batches
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), ids.len()));
        for id in ids {
            self.log.push(format!("fetch {id} #{call}"));
        }
        tokio::time::sleep(self.latency).await;
        for id in ids {
            self.log.push(format!("answered {id} #{call}"));
        }
        let mut answers = Vec::new();
        for &id in ids {
            let behaviour = self.scripted.lock().unwrap().get(&id.get()).copied();
            match behaviour {
                Some(Behaviour::Panic) => panic!("the source broke on {id}"),
                Some(Behaviour::Fail) => {
                    answers.push((id, Err(FetchError::Transient("HTTP 503".into()))));
                }
                Some(Behaviour::Omit) => {}
                None => {
                    let info = SessionInfo::decode(json!({ "id": id.get() })).unwrap();
                    let fetched_at = Utc.timestamp_opt(i64::try_from(call).unwrap(), 0).unwrap();
                    answers.push((
                        id,
                        Ok(Answer::Found(Box::new(FetchedSession {
                            info,
                            requested_at: fetched_at,
                            fetched_at,
                        }))),
                    ));
                }
            }
        }
        answers
    }
}

/// A database that takes every batch after `latency`, unless told to fail
/// or panic on a session.
struct FakeSink {
    latency: Duration,
    batches: Mutex<Vec<usize>>,
    log: Log,
    scripted: Mutex<HashMap<i64, Behaviour>>,
}

impl AnswerSink for FakeSink {
    async fn write(&self, answers: &[Answer]) -> Vec<Result<BatchResult, WriteError>> {
        tokio::time::sleep(self.latency).await;
        self.batches.lock().unwrap().push(answers.len());
        let scripted = self.scripted.lock().unwrap().clone();
        if answers
            .iter()
            .any(|a| matches!(scripted.get(&a.session_id().get()), Some(Behaviour::Panic)))
        {
            panic!("the sink broke");
        }
        answers
            .iter()
            .map(|answer| {
                let call = answer.answered_at().timestamp();
                self.log
                    .push(format!("write {} #{call}", answer.session_id()));
                match scripted.get(&answer.session_id().get()) {
                    Some(_) => Err(WriteError::Unavailable("disk full".into())),
                    None => Ok(BatchResult::Written),
                }
            })
            .collect()
    }
}

struct Harness {
    pipeline: Pipeline<&'static str>,
    done: mpsc::UnboundedReceiver<Done<&'static str>>,
    source: Arc<FakeSource>,
    sink: Arc<FakeSink>,
    log: Log,
}

/// No gathering window, so fetches start the moment a session is due; the
/// window has tests of its own.
const SETTINGS: PipelineSettings = PipelineSettings {
    fetchers: 4,
    fetch_batch: 20,
    fetch_gather: Duration::ZERO,
    batch_max: 200,
    batch_linger: Duration::from_millis(5),
    writers: 2,
};

fn start(settings: PipelineSettings) -> Harness {
    start_with(settings, Duration::from_millis(3))
}

fn start_with(settings: PipelineSettings, write_latency: Duration) -> Harness {
    let log = Log::default();
    let source = Arc::new(FakeSource {
        latency: Duration::from_millis(20),
        calls: AtomicUsize::new(0),
        batches: Mutex::default(),
        log: log.clone(),
        scripted: Mutex::default(),
    });
    let sink = Arc::new(FakeSink {
        latency: write_latency,
        batches: Mutex::default(),
        log: log.clone(),
        scripted: Mutex::default(),
    });
    let (tx, done) = mpsc::unbounded_channel();
    let pipeline = Pipeline::start(settings, Arc::clone(&source), Arc::clone(&sink), tx);
    Harness {
        pipeline,
        done,
        source,
        sink,
        log,
    }
}

fn id(n: i64) -> SessionId {
    SessionId::new(n).expect("positive")
}

impl Harness {
    /// The next `n` events handed back, each logged as `done <ticket>`.
    async fn finished(&mut self, n: usize) -> HashMap<&'static str, Processed> {
        let mut finished = HashMap::new();
        for _ in 0..n {
            let done = tokio::time::timeout(Duration::from_secs(60), self.done.recv())
                .await
                .expect("an event never came back")
                .expect("the pipeline hung up");
            self.log.push(format!("done {}", done.ticket));
            finished.insert(done.ticket, done.processed);
        }
        finished
    }

    fn calls(&self) -> usize {
        self.source.calls.load(Ordering::SeqCst)
    }

    /// Sessions asked for per call, in call order.
    fn batch_sizes(&self) -> Vec<usize> {
        let batches = self.source.batches.lock().unwrap();
        batches.iter().map(|&(_, n)| n).collect()
    }

    /// When each call started.
    fn call_starts(&self) -> Vec<tokio::time::Instant> {
        let batches = self.source.batches.lock().unwrap();
        batches.iter().map(|&(at, _)| at).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn events_arriving_during_a_fetch_get_exactly_one_follow_up() {
    let mut h = start(SETTINGS);
    h.pipeline.submit([(id(1), "e1")]);
    tokio::time::sleep(Duration::from_millis(5)).await; // fetch #1 in flight
    h.log.push("submit e2 e3".into());
    h.pipeline.submit([(id(1), "e2")]);
    h.pipeline.submit([(id(1), "e3")]);

    let finished = h.finished(3).await;

    assert!(
        finished
            .values()
            .all(|p| *p == Processed::Committed(BatchResult::Written))
    );
    assert_eq!(h.calls(), 2, "one fetch, then one follow-up for both");
    // e1 rode on fetch #1; e2 and e3 only on fetch #2, which started after
    // they arrived: nothing is handed back on an answer older than itself.
    assert!(h.log.position("done e1") > h.log.position("write 1 #1"));
    assert!(h.log.position("fetch 1 #2") > h.log.position("submit e2 e3"));
    assert!(
        h.log.position("fetch 1 #2") > h.log.position("answered 1 #1"),
        "never two fetches of one session at once"
    );
    assert!(h.log.position("done e2") > h.log.position("write 1 #2"));
    assert!(h.log.position("done e3") > h.log.position("write 1 #2"));
}

#[tokio::test(start_paused = true)]
async fn events_arriving_before_their_fetch_starts_ride_on_it() {
    // One fetcher, busy with session 1, while three events of session 2
    // arrive: they share the one fetch of session 2 that starts later.
    let mut h = start(PipelineSettings {
        fetchers: 1,
        ..SETTINGS
    });
    h.pipeline.submit([(id(1), "a")]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    h.pipeline.submit([(id(2), "b1")]);
    h.pipeline.submit([(id(2), "b2"), (id(2), "b3")]);

    h.finished(4).await;

    assert_eq!(h.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_burst_costs_one_fetch_per_session_batched_and_is_written_in_batches() {
    let mut h = start(SETTINGS);
    let tickets: Vec<&'static str> = (0..500)
        .map(|n| &*Box::leak(format!("e{n}").into_boxed_str()))
        .collect();
    h.pipeline.submit(
        tickets
            .iter()
            .enumerate()
            .map(|(n, &ticket)| (id(1 + (n % 50) as i64), ticket)),
    );

    let finished = h.finished(500).await;

    assert_eq!(finished.len(), 500);
    assert_eq!(
        h.batch_sizes(),
        vec![20, 20, 10],
        "every burst rode on one fetch of its session, 20 sessions a call"
    );
    let batches = h.sink.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 50);
    assert!(batches.len() < 50, "answers were batched: {batches:?}");
}

#[tokio::test(start_paused = true)]
async fn failures_hand_every_covered_event_back() {
    let mut h = start(SETTINGS);
    h.source.scripted.lock().unwrap().insert(1, Behaviour::Fail);
    h.source.scripted.lock().unwrap().insert(2, Behaviour::Omit);
    h.sink.scripted.lock().unwrap().insert(3, Behaviour::Fail);
    h.pipeline.submit([
        (id(1), "a1"),
        (id(1), "a2"),
        (id(2), "b"),
        (id(3), "c"),
        (id(4), "d"),
    ]);

    let finished = h.finished(5).await;

    let transient = |why: &str| Processed::FetchFailed {
        session_id: id(1),
        error: FetchError::Transient(why.into()),
    };
    assert_eq!(finished["a1"], transient("HTTP 503"));
    assert_eq!(finished["a2"], transient("HTTP 503"));
    assert_eq!(
        finished["b"],
        Processed::FetchFailed {
            session_id: id(2),
            error: FetchError::Transient("no answer for session 2".into()),
        }
    );
    assert_eq!(
        finished["c"],
        Processed::WriteFailed(WriteError::Unavailable("disk full".into()))
    );
    assert_eq!(finished["d"], Processed::Committed(BatchResult::Written));
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_any_stage_hands_its_events_back_and_the_pipeline_goes_on() {
    // One session per fetch, so only session 1's fetch panics.
    let mut h = start(PipelineSettings {
        fetch_batch: 1,
        ..SETTINGS
    });
    h.source
        .scripted
        .lock()
        .unwrap()
        .insert(1, Behaviour::Panic);
    h.sink.scripted.lock().unwrap().insert(2, Behaviour::Panic);
    h.pipeline
        .submit([(id(1), "fetch panics"), (id(2), "write panics")]);

    let finished = h.finished(2).await;

    assert_eq!(
        finished["fetch panics"],
        Processed::Crashed {
            panic: "the source broke on 1".into()
        }
    );
    assert_eq!(
        finished["write panics"],
        Processed::Crashed {
            panic: "the sink broke".into()
        }
    );
    h.pipeline.submit([(id(3), "after")]);
    let finished = h.finished(1).await;
    assert_eq!(
        finished["after"],
        Processed::Committed(BatchResult::Written)
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_batched_fetch_hands_back_every_event_of_the_batch() {
    let mut h = start(SETTINGS);
    h.source
        .scripted
        .lock()
        .unwrap()
        .insert(1, Behaviour::Panic);
    h.pipeline
        .submit([(id(1), "a"), (id(2), "b"), (id(2), "b2")]);

    let finished = h.finished(3).await;

    let crashed = Processed::Crashed {
        panic: "the source broke on 1".into(),
    };
    assert!(finished.values().all(|p| *p == crashed), "{finished:?}");
    assert_eq!(h.batch_sizes(), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn sessions_due_while_every_fetcher_is_busy_go_out_in_batches_of_at_most_the_batch_size() {
    let mut h = start(PipelineSettings {
        fetchers: 1,
        ..SETTINGS
    });
    h.pipeline.submit([(id(1), "first")]);
    tokio::time::sleep(Duration::from_millis(5)).await; // the fetcher is busy
    let tickets: Vec<&'static str> = (0..45)
        .map(|n| &*Box::leak(format!("e{n}").into_boxed_str()))
        .collect();
    h.pipeline.submit(
        tickets
            .iter()
            .enumerate()
            .map(|(n, &ticket)| (id(2 + n as i64), ticket)),
    );

    let finished = h.finished(46).await;

    assert!(
        finished
            .values()
            .all(|p| *p == Processed::Committed(BatchResult::Written))
    );
    assert_eq!(h.batch_sizes(), vec![1, 20, 20, 5]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_fetcher_waits_the_gathering_window_for_more_sessions() {
    let mut h = start(PipelineSettings {
        fetch_gather: Duration::from_millis(5),
        ..SETTINGS
    });
    let submitted = tokio::time::Instant::now();
    h.pipeline.submit([(id(1), "a")]);
    tokio::time::sleep(Duration::from_millis(2)).await;
    h.pipeline.submit([(id(2), "b")]);

    h.finished(2).await;

    assert_eq!(h.batch_sizes(), vec![2], "one call for both");
    assert_eq!(
        h.call_starts(),
        vec![submitted + Duration::from_millis(5)],
        "the call waited the window, no longer"
    );
}

#[tokio::test(start_paused = true)]
async fn the_gathering_window_bounds_the_wait_of_a_lone_session() {
    let mut h = start(PipelineSettings {
        fetch_gather: Duration::from_millis(5),
        ..SETTINGS
    });
    let submitted = tokio::time::Instant::now();
    h.pipeline.submit([(id(1), "a")]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.pipeline.submit([(id(2), "b")]);

    h.finished(2).await;

    assert_eq!(h.batch_sizes(), vec![1, 1]);
    assert_eq!(
        h.call_starts(),
        vec![
            submitted + Duration::from_millis(5),
            submitted + Duration::from_millis(15)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_out_without_waiting() {
    let mut h = start(PipelineSettings {
        fetch_batch: 3,
        fetch_gather: Duration::from_secs(1),
        ..SETTINGS
    });
    let submitted = tokio::time::Instant::now();
    h.pipeline
        .submit([(id(1), "a"), (id(2), "b"), (id(3), "c")]);

    h.finished(3).await;

    assert_eq!(h.batch_sizes(), vec![3]);
    assert_eq!(h.call_starts(), vec![submitted]);
}

#[tokio::test(start_paused = true)]
async fn a_session_in_flight_is_not_asked_for_again_in_the_next_batch() {
    // Session 1 is in flight when its second event arrives together with
    // session 2's: the next batch holds only session 2, and session 1's
    // follow-up goes out after its first answer.
    let mut h = start(SETTINGS);
    h.pipeline.submit([(id(1), "a1")]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    h.log.push("submit a2 b".into());
    h.pipeline.submit([(id(1), "a2"), (id(2), "b")]);

    h.finished(3).await;

    assert_eq!(h.batch_sizes(), vec![1, 1, 1]);
    assert!(h.log.position("fetch 2 #2") > h.log.position("submit a2 b"));
    assert!(h.log.position("fetch 1 #3") > h.log.position("answered 1 #1"));
    assert!(h.log.position("done a2") > h.log.position("write 1 #3"));
}

#[tokio::test(start_paused = true)]
async fn answers_arriving_while_every_writer_is_busy_go_out_in_one_batch() {
    // One writer, slow commits: session 1's batch is being written while
    // the answers of sessions 2..=41 arrive (in two fetches, 20 ms apart);
    // they wait for the writer and go in one batch, not in one batch per
    // linger.
    let mut h = start_with(
        PipelineSettings {
            writers: 1,
            ..SETTINGS
        },
        Duration::from_millis(100),
    );
    h.pipeline.submit([(id(1), "first")]);
    tokio::time::sleep(Duration::from_millis(25)).await; // its write started
    h.pipeline.submit((2..=21).map(|n| (id(n), "early")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.pipeline.submit((22..=41).map(|n| (id(n), "late")));

    h.finished(41).await;

    assert_eq!(h.sink.batches.lock().unwrap().clone(), vec![1, 40]);
}

#[test]
fn the_fetch_capacity_is_every_fetcher_with_a_full_batch() {
    let default = PipelineSettings {
        fetchers: 16,
        fetch_batch: 20,
        ..SETTINGS
    };
    assert_eq!(default.fetch_capacity(), 320);
    let none = PipelineSettings {
        fetchers: 0,
        fetch_batch: 0,
        ..SETTINGS
    };
    assert_eq!(none.fetch_capacity(), 1);
}
