//! One conformance suite, run on the embedded store and on DynamoDB Local.

use crate::support;

use std::sync::Arc;

use edgerec_features::dynamodb::DynamoFeatureStore;
use edgerec_features::embedded::EmbeddedFeatureStore;
use edgerec_features::event::{Event, EventKind};
use edgerec_features::item::{ItemFeatures, ItemMetadata, Popularity};
use edgerec_features::store::{FeatureSettings, FeatureStore, Lease, Sequenced};
use edgerec_features::user::UserFeatures;

fn settings() -> FeatureSettings {
    FeatureSettings {
        history_len: 3,
        ..FeatureSettings::default()
    }
}

fn sequenced(seq: u64, user: &str, item: &str, time_ms: i64) -> Sequenced {
    Sequenced {
        seq,
        event: Event::from_good_ids(&format!("e{seq}"), user, item, EventKind::View, time_ms),
    }
}

async fn updates_are_applied_once_and_read_in_batches<S: FeatureStore>(store: &S) {
    let batch: Vec<Sequenced> = [
        ("u1", "a", 10),
        ("u1", "b", 20),
        ("u2", "a", 30),
        ("u1", "c", 40),
        ("u1", "d", 50),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(u, item, t))| sequenced(i as u64 + 1, u, item, t))
    .collect();
    store.apply("n1", &batch).await.expect("applies");
    // A replay of the same log, and of part of it, changes nothing.
    store.apply("n1", &batch).await.expect("re-applies");
    store
        .apply("n1", &batch[2..])
        .await
        .expect("re-applies a suffix");

    let ids = ["u1", "nobody", "u2"].map(support::user);
    let users = store.users(&ids).await.expect("reads users");
    assert_eq!(
        users[0].history(),
        ["b", "c", "d"],
        "bounded to 3, oldest dropped"
    );
    assert_eq!(users[0].counts[&EventKind::View], 4);
    assert_eq!(users[0].last_seen_ms, Some(50));
    assert_eq!(users[1], UserFeatures::default(), "cold start: the default");
    assert_eq!(users[2].history(), ["a"]);

    // Another node's log has its own numbering: its events are applied too.
    store
        .apply("n2", &[sequenced(1, "u2", "z", 60)])
        .await
        .expect("applies another node's events");
    let u2 = &store.users(&ids[2..]).await.expect("reads")[0];
    assert_eq!(u2.history(), ["a", "z"]);

    let items = store
        .items(&[support::item("a"), support::item("never")])
        .await
        .expect("reads items");
    let a = items[0].as_ref().expect("item a exists");
    assert_eq!(a.interactions, 2);
    assert!(
        a.popularity.score > 1.99 && a.popularity.score <= 2.0,
        "{:?}",
        a.popularity
    );
    assert!(items[1].is_none());

    // A refresh replaces metadata and popularity; later events add on top, earlier ones stay applied once.
    let refreshed = ItemFeatures {
        metadata: Some(ItemMetadata {
            title: "A".into(),
            genres: vec!["g".into()],
        }),
        popularity: Popularity {
            score: 10.0,
            at_ms: 100,
        },
        interactions: 10,
    };
    store
        .put_items(&[(support::item("a"), refreshed.clone())])
        .await
        .expect("puts items");
    store.apply("n1", &batch).await.expect("replays again");
    store
        .apply("n1", &[sequenced(6, "u3", "a", 100)])
        .await
        .expect("applies a new event");
    let a = store.items(&[support::item("a")]).await.expect("reads")[0]
        .clone()
        .expect("a");
    assert_eq!(a.metadata, refreshed.metadata);
    assert_eq!(a.interactions, 11);
    assert_eq!(
        a.popularity,
        Popularity {
            score: 11.0,
            at_ms: 100
        }
    );
    store.sync().await.expect("syncs");

    // Many events: batched reads beyond one request's 100 keys.
    let many: Vec<Sequenced> = (0..250)
        .map(|i| {
            sequenced(
                100 + i,
                &format!("m{i}"),
                &format!("i{}", i % 7),
                1000 + i as i64,
            )
        })
        .collect();
    store.apply("n1", &many).await.expect("applies many");
    let ids: Vec<_> = (0..250).map(|i| support::user(&format!("m{i}"))).collect();
    let users = store.users(&ids).await.expect("reads many");
    assert!(
        users
            .iter()
            .enumerate()
            .all(|(i, u)| u.history() == [format!("i{}", i % 7)])
    );
}

/// Two writers updating one user at once (two nodes): no update is lost.
async fn concurrent_writers_lose_no_update<S: FeatureStore>(store: Arc<S>) {
    let tasks: Vec<_> = (0..4)
        .map(|node| {
            let store = store.clone();
            tokio::spawn(async move {
                for seq in 1..=10u64 {
                    let e = sequenced(
                        seq,
                        "hot",
                        &format!("n{node}-{seq}"),
                        (node * 100 + seq) as i64,
                    );
                    store
                        .apply(&format!("node{node}"), &[e])
                        .await
                        .expect("applies");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let user = &store.users(&[support::user("hot")]).await.expect("reads")[0];
    assert_eq!(
        user.counts[&EventKind::View],
        40,
        "every event of every node counted once"
    );
}

fn lease(incarnation: u64, expires_ms: i64) -> Lease {
    Lease {
        incarnation: format!("{incarnation:016x}"),
        host: "host-a".into(),
        pid: 4242,
        started_ms: 1_000,
        expires_ms,
    }
}

/// Leases change only by compare-and-swap: of any number of swaps from one expected lease, one lands, which is
/// what lets the second of two nodes started with one node id notice the first. Returns the lease it leaves on
/// `n2`.
async fn leases_change_only_by_compare_and_swap<S: FeatureStore>(store: Arc<S>) -> Lease {
    assert_eq!(
        store.lease("n1").await.expect("reads"),
        None,
        "none at first"
    );

    let first = lease(1, 10_000);
    assert!(
        store
            .swap_lease("n1", None, Some(&first))
            .await
            .expect("swaps"),
        "taken when none is stored"
    );
    assert_eq!(store.lease("n1").await.expect("reads"), Some(first.clone()));

    let other = lease(2, 10_000);
    assert!(
        !store
            .swap_lease("n1", None, Some(&other))
            .await
            .expect("answers"),
        "not taken again as if none were stored"
    );
    let stale = Lease {
        expires_ms: 9_999,
        ..first.clone()
    };
    assert!(
        !store
            .swap_lease("n1", Some(&stale), Some(&other))
            .await
            .expect("answers"),
        "a lease that differs in one field is not the stored one"
    );
    assert!(
        !store
            .swap_lease("n1", Some(&stale), None)
            .await
            .expect("answers"),
        "nor removed with the wrong one"
    );
    assert_eq!(
        store.lease("n1").await.expect("reads"),
        Some(first.clone()),
        "failed swaps change nothing"
    );

    let renewed = Lease {
        expires_ms: 20_000,
        ..first.clone()
    };
    assert!(
        store
            .swap_lease("n1", Some(&first), Some(&renewed))
            .await
            .expect("swaps"),
        "renewed with the stored lease"
    );
    assert_eq!(
        store.lease("n1").await.expect("reads"),
        Some(renewed.clone())
    );

    // Another node id's lease is its own.
    assert_eq!(store.lease("n2").await.expect("reads"), None);
    let second = lease(3, 10_000);
    assert!(
        store
            .swap_lease("n2", None, Some(&second))
            .await
            .expect("swaps")
    );
    assert!(
        store
            .swap_lease("n1", Some(&renewed), None)
            .await
            .expect("swaps"),
        "released with the stored lease"
    );
    assert_eq!(store.lease("n1").await.expect("reads"), None);
    assert_eq!(
        store.lease("n2").await.expect("reads"),
        Some(second.clone())
    );

    // Eight contenders at once, from no lease and then from a stored one: exactly one wins each time, and its
    // lease is the one stored.
    for expected in [None, Some(lease(9, 30_000))] {
        if let Some(expected) = &expected {
            let stored = store.lease("n3").await.expect("reads");
            assert!(
                store
                    .swap_lease("n3", stored.as_ref(), Some(expected))
                    .await
                    .expect("swaps")
            );
        }
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let store = store.clone();
                let expected = expected.clone();
                tokio::spawn(async move {
                    let mine = lease(100 + i, 40_000);
                    let won = store
                        .swap_lease("n3", expected.as_ref(), Some(&mine))
                        .await
                        .expect("answers");
                    won.then_some(mine)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            winners.extend(task.await.expect("task"));
        }
        assert_eq!(
            winners.len(),
            1,
            "exactly one of 8 swaps from {expected:?} lands"
        );
        assert_eq!(
            store.lease("n3").await.expect("reads").as_ref(),
            winners.first()
        );
    }
    second
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        EmbeddedFeatureStore::open(&dir.path().join("features.redb"), settings()).expect("opens");
    updates_are_applied_once_and_read_in_batches(&store).await;
    let store = Arc::new(store);
    concurrent_writers_lose_no_update(store.clone()).await;
    let left = leases_change_only_by_compare_and_swap(store.clone()).await;
    drop(store);
    // Reopening keeps everything.
    let store =
        EmbeddedFeatureStore::open(&dir.path().join("features.redb"), settings()).expect("reopens");
    assert_eq!(
        store.users(&[support::user("hot")]).await.expect("reads")[0].interactions(),
        40
    );
    assert_eq!(store.lease("n2").await.expect("reads"), Some(left));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_store_conforms() {
    let config = support::aws_config("store");
    let store = DynamoFeatureStore::connect(&config, settings());
    store.ensure_created().await.expect("creates the table");
    store
        .ensure_created()
        .await
        .expect("creating twice is fine");
    updates_are_applied_once_and_read_in_batches(&store).await;
    let store = Arc::new(store);
    concurrent_writers_lose_no_update(store.clone()).await;
    leases_change_only_by_compare_and_swap(store).await;
}

#[tokio::test]
async fn an_unreachable_dynamodb_is_a_clear_error() {
    let mut config = support::aws_config("unreachable");
    config.dynamodb_endpoint = Some("http://127.0.0.1:9".into());
    let store = DynamoFeatureStore::connect(&config, settings());
    let e = store
        .users(&[support::user("u")])
        .await
        .expect_err("unreachable");
    let text = e.to_string();
    assert!(
        text.contains("feature store is unavailable") && text.contains("reading DynamoDB"),
        "{text}"
    );
    let e = store
        .apply("n", &[sequenced(1, "u", "i", 1)])
        .await
        .expect_err("unreachable");
    assert!(e.to_string().contains("unavailable"), "{e}");
    let e = store
        .swap_lease("n", None, Some(&lease(1, 1)))
        .await
        .expect_err("unreachable");
    assert!(e.to_string().contains("writing DynamoDB"), "{e}");
}
