//! Reconciliation against the simulator and the real store: sessions that
//! never had an event get their rows and pending agents, paging reaches each
//! session once, a second run changes nothing, a pick-up or close the worker
//! never heard of is healed, a PBX that repeats its first page does not
//! loop, and one run at a time per PBX across replicas (advisory lock, and
//! once per interval between periodic runners). Every test counts the
//! simulator's calls.

use std::sync::Arc;
use std::time::Duration;

use session_enricher::pbx::{ListEnd, PbxClient};
use session_enricher::reconcile::{
    PeriodicReconcile, ReconcileReport, ReconcileSettings, Reconciler, Run, run_periodically,
};
use session_enricher::session::{SessionId, SessionInfo};
use session_enricher::simulator::{Fault, ListPaging, synthetic_session};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::helpers::{PBX, TestEnv, wait_for, wait_until};

fn settings(page_size: usize) -> ReconcileSettings {
    ReconcileSettings {
        page_size,
        ..ReconcileSettings::default()
    }
}

fn reconciler(env: &TestEnv, page_size: usize) -> Reconciler {
    let pbx = Arc::new(PbxClient::new(env.pbx_settings()).expect("a PBX client"));
    Reconciler::new(pbx, env.store(), PBX.into(), settings(page_size))
}

/// One run now, which must take the lock.
async fn run(reconciler: &Reconciler) -> ReconcileReport {
    match reconciler.run_now(&CancellationToken::new()).await {
        Ok(Run::Done(report)) => report,
        other => panic!("the run did not happen: {other:?}"),
    }
}

fn raw(ids: &[SessionId]) -> Vec<i64> {
    let mut ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    ids.sort_unstable();
    ids
}

/// `(agent_user_id, position)` of the synthetic session's participants.
fn synthetic_agents(id: i64) -> Vec<(i64, i32)> {
    SessionInfo::decode(synthetic_session(id).unwrap())
        .unwrap()
        .pending_agents
        .iter()
        .enumerate()
        .map(|(position, agent)| (agent.user_id, position as i32))
        .collect()
}

async fn last_run(env: &TestEnv) -> Option<(Option<String>, bool)> {
    sqlx::query("SELECT result, finished_at IS NOT NULL FROM reconcile_runs WHERE pbx = $1")
        .bind(PBX)
        .fetch_optional(&env.db)
        .await
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

#[tokio::test]
async fn reconcile_creates_the_rows_of_sessions_that_never_had_an_event_with_their_pending_agents()
{
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(12);
    let report = run(&reconciler(&env, 100)).await;

    assert_eq!(report.listed, 12);
    assert_eq!(raw(&report.added), (1..=12).collect::<Vec<_>>());
    assert!(report.changed.is_empty() && report.failed.is_empty());
    assert!(report.is_complete(), "{report}");
    assert_eq!(env.session_count().await, 12);
    for id in 1..=12 {
        assert!(env.session_row(id).await.is_some(), "session {id}");
        assert_eq!(
            env.pending_agents(id).await,
            synthetic_agents(id),
            "session {id}"
        );
    }
    assert_eq!(
        env.pending_agents(3).await.len(),
        2,
        "a queued session's agents"
    );
    let stats = env.sim.stats();
    assert_eq!(
        stats.list_requests, 2,
        "one page of 12, then the empty page"
    );
    assert_eq!(stats.query_requests, 1, "12 sessions in one query");
    assert_eq!(stats.ids_requested, 12, "each session asked for once");
    assert_eq!(stats.session_requests, 0);
    assert_eq!(last_run(&env).await, Some((Some("done".into()), true)));
    env.finish().await;
}

#[tokio::test]
async fn paging_in_small_pages_reaches_every_session_exactly_once() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(10);
    let report = run(&reconciler(&env, 3)).await;
    assert_eq!(raw(&report.added), (1..=10).collect::<Vec<_>>());
    assert_eq!(report.pages, 5, "4 pages of 3 and an empty one");
    let stats = env.sim.stats();
    assert_eq!(stats.list_requests, 5);
    assert_eq!(stats.ids_requested, 10, "each session fetched exactly once");
    assert_eq!(env.session_count().await, 10);

    // A PBX whose next page starts at the cursor's session, not after it.
    env.sim.set_list_paging(ListPaging::Inclusive);
    let report = run(&reconciler(&env, 3)).await;
    assert_eq!((report.listed, report.unchanged), (10, 10));
    assert!(report.is_complete(), "{report}");
    assert_eq!(env.sim.stats().ids_requested - stats.ids_requested, 10);
    env.finish().await;
}

#[tokio::test]
async fn a_second_run_changes_nothing_and_a_pick_up_or_close_without_an_event_is_healed() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(12);
    let reconciler = reconciler(&env, 5);
    let first = run(&reconciler).await;
    assert_eq!(first.added.len(), 12);

    let second = run(&reconciler).await;
    assert!(second.added.is_empty(), "{second}");
    assert!(second.changed.is_empty(), "{second}");
    assert_eq!((second.unchanged, second.rechecked), (12, 0));
    assert!(
        second
            .to_string()
            .contains("added 0, changed 0, unchanged 12")
    );

    // On the PBX, without an event: 3 is picked up, 6 closed (it is no
    // longer listed as open, but stored as waiting: fetched all the same).
    assert!(!env.pending_agents(3).await.is_empty());
    assert!(!env.pending_agents(6).await.is_empty());
    assert!(env.sim.pick_up(3, 137));
    assert!(env.sim.close_session(6));
    let third = run(&reconciler).await;
    assert_eq!(raw(&third.changed), [3, 6], "{third}");
    assert_eq!((third.listed, third.rechecked), (11, 1));
    assert!(env.pending_agents(3).await.is_empty());
    assert!(env.pending_agents(6).await.is_empty());
    assert_eq!(
        env.pending_agents(9).await,
        synthetic_agents(9),
        "untouched"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_listed_session_the_pbx_then_does_not_find_is_marked_missing_and_healed_later() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(1);
    let reconciler = reconciler(&env, 100);
    assert_eq!(raw(&run(&reconciler).await.added), [1]);
    // Listed, then gone when fetched: the two pages answer as usual, the
    // `get` of session 1 says 60001.
    env.sim.fail_next_session_requests([
        Fault::Delay(Duration::ZERO),
        Fault::Delay(Duration::ZERO),
        Fault::Errcode(60001),
    ]);
    let report = run(&reconciler).await;
    assert_eq!(raw(&report.missing), [1], "{report}");
    assert!(
        report.is_complete(),
        "not found is an answer, not a failure"
    );
    let missing: bool = env
        .session_row(1)
        .await
        .unwrap()
        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("missing_at")
        .is_some();
    assert!(missing);
    let report = run(&reconciler).await;
    assert_eq!(raw(&report.changed), [1], "found again: {report}");
    let missing: bool = env
        .session_row(1)
        .await
        .unwrap()
        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("missing_at")
        .is_some();
    assert!(!missing);
    env.finish().await;
}

#[tokio::test]
async fn a_pbx_that_repeats_the_same_page_does_not_loop_forever() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(10);
    env.sim.set_list_paging(ListPaging::IgnoresCursor);
    let report = run(&reconciler(&env, 3)).await;
    assert_eq!(report.end, ListEnd::Repeated);
    assert!(!report.is_complete());
    assert_eq!(raw(&report.added), [8, 9, 10], "what it found is written");
    assert_eq!(
        report.rechecked, 0,
        "an incomplete listing says nothing of the rest"
    );
    assert!(report.to_string().contains("INCOMPLETE"), "{report}");
    assert_eq!(env.sim.stats().list_requests, 2);
    assert_eq!(
        last_run(&env).await,
        Some((Some("incomplete".into()), true))
    );
    env.finish().await;
}

#[tokio::test]
async fn two_reconcilers_never_run_at_once_and_a_killed_run_frees_the_lock() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(5);
    let (first, second) = (Arc::new(reconciler(&env, 100)), reconciler(&env, 100));

    // The first run's listing is slow: it holds the lock meanwhile.
    env.sim
        .fail_next_session_requests([Fault::Delay(Duration::from_secs(2))]);
    let running = tokio::spawn({
        let first = Arc::clone(&first);
        async move { first.run_now(&CancellationToken::new()).await }
    });
    wait_until("the first run listing", || async {
        env.sim.stats().list_requests == 1
    })
    .await;
    let stop = CancellationToken::new();
    assert!(matches!(second.run_now(&stop).await, Ok(Run::Busy)));
    assert!(matches!(
        second.run_if_due(Duration::from_secs(3600), &stop).await,
        Ok(Run::Busy)
    ));
    assert!(matches!(running.await.unwrap(), Ok(Run::Done(_))));
    assert_eq!(
        env.sim.stats().list_requests,
        2,
        "only the first run listed"
    );
    assert!(matches!(
        second.run_if_due(Duration::from_secs(3600), &stop).await,
        Ok(Run::NotDue)
    ));
    assert!(matches!(second.run_now(&stop).await, Ok(Run::Done(_))));

    // A run killed while it holds the lock: its connection is closed, and
    // the server lets the lock go.
    env.sim
        .fail_next_session_requests([Fault::Delay(Duration::from_secs(30))]);
    let before = env.sim.stats().list_requests;
    let killed = tokio::spawn({
        let first = Arc::clone(&first);
        async move { first.run_now(&CancellationToken::new()).await }
    });
    wait_until("the run to be killed listing", || async {
        env.sim.stats().list_requests > before
    })
    .await;
    assert!(matches!(second.run_now(&stop).await, Ok(Run::Busy)));
    killed.abort();
    wait_for("the lock of the killed run released", || async {
        match second.run_now(&stop).await {
            Ok(Run::Done(report)) => Some(report),
            _ => None,
        }
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn periodic_reconcilers_on_two_replicas_run_once_per_interval_between_them() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(5);
    // Each replica looks every 1-2 s (a quarter interval, jittered). The
    // first listing takes 2 s: the replica that did not take the lock
    // looks at least once while the other runs, and the next run is due
    // only 8 s after this one started.
    env.sim
        .fail_next_session_requests([Fault::Delay(Duration::from_secs(2))]);
    let shutdown = CancellationToken::new();
    let periodic = PeriodicReconcile {
        interval: Duration::from_secs(8),
        settings: settings(100),
    };
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let pbx = Arc::new(PbxClient::new(env.pbx_settings()).unwrap());
            tokio::spawn(run_periodically(
                pbx,
                env.store(),
                PBX.into(),
                periodic.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    wait_until("one run finished", || async {
        last_run(&env).await == Some((Some("done".into()), true))
    })
    .await;
    shutdown.cancel();
    let mut done = 0;
    let mut skipped = 0;
    for replica in replicas {
        let runs = replica.await.unwrap();
        assert_eq!(runs.failed, 0, "{runs:?}");
        done += runs.done;
        skipped += runs.busy + runs.not_due;
    }
    assert_eq!(done, 1, "one run between the two replicas");
    assert!(skipped >= 1, "the other replica looked and did not run");
    assert_eq!(env.session_count().await, 5);
    let stats = env.sim.stats();
    assert_eq!(
        stats.list_requests, 2,
        "one listing: a page and the empty one"
    );
    assert_eq!(stats.ids_requested, 5);
    env.finish().await;
}
