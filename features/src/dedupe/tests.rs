use super::*;

fn keys_of(prefix: &str, n: usize) -> Vec<u128> {
    (0..n).map(|i| id_key(&format!("{prefix}-{i}"))).collect()
}

fn run_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("lists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ids"))
        .collect();
    names.sort();
    names
}

#[test]
fn ids_are_remembered_across_reopening_and_forgotten_when_old() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = crate::now_ms();
    let max_age = 3_600_000;
    {
        let mut index = DedupeIndex::open(dir.path(), max_age).expect("opens");
        let mut group = index.group();
        assert!(
            group
                .insert_new(id_key("old"), now - 2 * max_age)
                .expect("inserts")
        );
        group.commit(2).expect("commits");
        index.make_durable().expect("writes");
        let mut group = index.group();
        assert!(group.insert_new(id_key("a"), now).expect("inserts"));
        assert!(!group.insert_new(id_key("a"), now).expect("looks up"));
        group.commit(3).expect("commits");
        index.make_durable().expect("writes");
        // A group dropped without committing leaves nothing.
        let mut group = index.group();
        assert!(group.insert_new(id_key("b"), now).expect("inserts"));
        drop(group);
        index.make_durable().expect("writes nothing new");
    }
    let mut index = DedupeIndex::open(dir.path(), max_age).expect("reopens");
    assert_eq!(index.indexed_seq(), 3);
    let mut group = index.group();
    assert!(!group.insert_new(id_key("a"), now).expect("looks up"));
    assert!(group.insert_new(id_key("b"), now).expect("inserts"));
    assert!(
        group
            .insert_new(id_key("old"), now - 2 * max_age)
            .expect("inserts"),
        "the run of expired ids was deleted whole"
    );
}

#[test]
fn runs_answer_exactly_for_every_key_and_reject_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut keys = keys_of("k", 5_000);
    keys.sort_unstable();
    let meta = RunMeta {
        first_seq: 1,
        last_seq: 9,
        max_time_ms: 7,
    };
    let run = Run::write(dir.path(), meta, keys.iter().copied().map(Ok))
        .expect("writes")
        .expect("has keys");
    assert_eq!(run.count(), 5_000);
    assert!(keys.iter().all(|k| run.contains(*k).expect("reads")));
    let absent = keys_of("absent", 20_000);
    assert!(absent.iter().all(|k| !run.contains(*k).expect("reads")));
    let reread: Vec<u128> = run.keys().collect::<Result<_, _>>().expect("streams");
    assert_eq!(reread, keys);
    let reopened = Run::open(&run.path).expect("reopens");
    assert_eq!(reopened.meta, meta);
    assert!(keys.iter().all(|k| reopened.contains(*k).expect("reads")));
    assert!(
        absent
            .iter()
            .all(|k| !reopened.contains(*k).expect("reads"))
    );
    // One byte flipped anywhere is found.
    let mut bytes = std::fs::read(&run.path).expect("reads");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&run.path, &bytes).expect("writes");
    assert!(matches!(
        Run::open(&run.path),
        Err(RunError::Damaged { .. })
    ));
    // Single keys and no keys.
    let one = Run::write(
        dir.path(),
        RunMeta {
            first_seq: 10,
            last_seq: 10,
            max_time_ms: 7,
        },
        [Ok(5u128)].into_iter(),
    )
    .expect("writes")
    .expect("has a key");
    assert!(one.contains(5).expect("reads"));
    assert!(!one.contains(6).expect("reads"));
    let none = Run::write(
        dir.path(),
        RunMeta {
            first_seq: 11,
            last_seq: 11,
            max_time_ms: 7,
        },
        std::iter::empty(),
    )
    .expect("writes");
    assert!(none.is_none());
}

#[test]
fn merges_keep_every_id_and_leave_few_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = crate::now_ms();
    let mut index = DedupeIndex::open(dir.path(), 3_600_000).expect("opens");
    let batches = 9;
    let all: Vec<Vec<u128>> = (0..batches)
        .map(|b| keys_of(&format!("b{b}"), 300))
        .collect();
    for (b, keys) in all.iter().enumerate() {
        let mut group = index.group();
        for key in keys {
            assert!(group.insert_new(*key, now).expect("inserts"));
        }
        group.commit(b as u64 + 1).expect("commits");
        index.make_durable().expect("writes a run");
    }
    // Small runs are merged by the thread: wait for it, then every id is still found.
    let merged = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        run_files(dir.path()).len() < batches
    });
    assert!(merged, "runs merged: {:?}", run_files(dir.path()));
    let mut group = index.group();
    for key in all.iter().flatten() {
        assert!(!group.insert_new(*key, now).expect("looks up"));
    }
    drop(group);
    drop(index);
    let mut index = DedupeIndex::open(dir.path(), 3_600_000).expect("reopens");
    assert_eq!(index.indexed_seq(), batches as u64);
    let mut group = index.group();
    for key in all.iter().flatten() {
        assert!(!group.insert_new(*key, now).expect("looks up"));
    }
}

#[test]
fn a_merge_cut_short_by_a_crash_or_damage_loses_nothing_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |first, last, keys: &[u128]| {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        let meta = RunMeta {
            first_seq: first,
            last_seq: last,
            max_time_ms: crate::now_ms(),
        };
        Run::write(dir.path(), meta, keys.into_iter().map(Ok))
            .expect("writes")
            .expect("keys");
    };
    let (a, b) = (keys_of("a", 10), keys_of("b", 10));
    write(1, 4, &a);
    write(5, 8, &b);
    // The output of a merge of both, left beside its inputs.
    write(1, 8, &[a.clone(), b.clone()].concat());
    // A partial run of a write that never finished.
    std::fs::write(
        dir.path()
            .join(".00000000000000000009-00000000000000000009.ids.partial"),
        b"torn",
    )
    .expect("writes");
    let index = DedupeIndex::open(dir.path(), 3_600_000).expect("opens");
    assert_eq!(
        run_files(dir.path()),
        vec![
            RunMeta {
                first_seq: 1,
                last_seq: 8,
                max_time_ms: 0
            }
            .file_name()
        ]
    );
    assert_eq!(index.indexed_seq(), 8);
    drop(index);
    // A damaged run is moved aside with a warning; the index opens without it.
    let path = dir.path().join(
        RunMeta {
            first_seq: 1,
            last_seq: 8,
            max_time_ms: 0,
        }
        .file_name(),
    );
    let mut bytes = std::fs::read(&path).expect("reads");
    bytes[60] ^= 1;
    std::fs::write(&path, &bytes).expect("writes");
    let index = DedupeIndex::open(dir.path(), 3_600_000).expect("opens");
    assert_eq!(
        index.indexed_seq(),
        0,
        "the log is read again from its start"
    );
    assert!(
        dir.path()
            .join("damaged")
            .join(path.file_name().expect("name"))
            .exists()
    );
}

#[test]
fn the_earlier_redb_index_is_imported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redb_path = dir.path().join("dedupe.redb");
    let now = crate::now_ms();
    {
        let db = redb::Database::create(&redb_path).expect("creates");
        let txn = db.begin_write().expect("writes");
        {
            let mut ids = txn
                .open_table(redb::TableDefinition::<u128, i64>::new("ids"))
                .expect("table");
            for key in keys_of("old", 100) {
                ids.insert(key, now).expect("inserts");
            }
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .expect("table");
            meta.insert("indexed_seq", 42).expect("inserts");
        }
        txn.commit().expect("commits");
    }
    let mut index = DedupeIndex::open(&dir.path().join("ids"), 3_600_000).expect("opens");
    assert!(!redb_path.exists());
    assert_eq!(index.indexed_seq(), 42);
    let mut group = index.group();
    for key in keys_of("old", 100) {
        assert!(!group.insert_new(key, now).expect("looks up"));
    }
}
