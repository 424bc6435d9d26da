use super::*;
use edgerec_core::{ItemId, MAX_ID_BYTES, RequestId, Surface, VariantName, Version};

use crate::event::{EventKind, ServedRequest};

fn entry(i: usize) -> WalEntry {
    WalEntry::Event(Event::from_good_ids(
        &format!("e{i}"),
        "u",
        &format!("i{i}"),
        EventKind::View,
        i as i64,
    ))
}

/// Opens the log in `dir` and returns it with every record it held.
fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Vec<(Incarnation, WalRecord)>), WalError> {
    let mut seen = Vec::new();
    let (wal, opened) = Wal::open(dir, segment_bytes, |incarnation, record| {
        seen.push((incarnation, record.clone()));
        Ok::<_, WalError>(())
    })?;
    assert_eq!(opened.records, seen.len() as u64);
    assert_eq!(opened.first_seq, seen.first().map(|(_, r)| r.seq));
    Ok((wal, seen))
}

fn seqs(records: &[(Incarnation, WalRecord)]) -> Vec<u64> {
    records.iter().map(|(_, r)| r.seq).collect()
}

#[test]
fn records_survive_reopening_and_rolling() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, replay) = open(dir.path(), 300).expect("opens");
    assert!(replay.is_empty());
    for i in 0..10 {
        assert_eq!(wal.append(&[entry(i)]).expect("appends").0, i as u64 + 1);
        wal.sync().expect("syncs");
    }
    assert!(
        segments(dir.path()).expect("lists").len() > 1,
        "rolled at 300 bytes"
    );
    let first = wal.incarnation();
    drop(wal);
    let (wal, replay) = open(dir.path(), 300).expect("reopens");
    assert_eq!(seqs(&replay), (1..=10).collect::<Vec<_>>());
    assert_eq!(replay[3].1.entry, entry(3));
    assert!(replay.iter().all(|(i, _)| *i == first));
    assert_eq!(wal.next_seq(), 11);
    assert_ne!(
        wal.incarnation(),
        first,
        "every opening is a new incarnation"
    );
}

#[test]
fn each_opening_writes_under_its_own_incarnation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut incarnations = Vec::new();
    for round in 0..3 {
        let (mut wal, _) = open(dir.path(), 1 << 20).expect("opens");
        incarnations.push(wal.incarnation());
        wal.append(&[entry(round)]).expect("appends");
        wal.sync().expect("syncs");
    }
    // Opening without writing leaves no empty segment behind.
    drop(open(dir.path(), 1 << 20).expect("opens"));
    drop(open(dir.path(), 1 << 20).expect("opens"));
    let (_, replay) = open(dir.path(), 1 << 20).expect("opens");
    assert_eq!(seqs(&replay), [1, 2, 3]);
    let read: Vec<Incarnation> = replay.iter().map(|(i, _)| *i).collect();
    assert_eq!(read, incarnations);
    assert_eq!(segments(dir.path()).expect("lists").len(), 4);
}

#[test]
fn a_torn_tail_is_cut_off_and_numbering_continues() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, _) = open(dir.path(), 1 << 20).expect("opens");
    wal.append(&[entry(0), entry(1)]).expect("appends");
    wal.sync().expect("syncs");
    let path = segments(dir.path()).expect("lists")[0].path.clone();
    drop(wal);
    // Half of a third frame, as a crash mid-write leaves it.
    let mut third = Vec::new();
    frame(3, &entry(2), &mut third).expect("frames");
    let mut bytes = std::fs::read(&path).expect("reads");
    let whole = bytes.len() as u64;
    bytes.extend_from_slice(&third[..third.len() / 2]);
    std::fs::write(&path, &bytes).expect("writes");

    let (mut wal, replay) = open(dir.path(), 1 << 20).expect("reopens");
    assert_eq!(replay.len(), 2);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), whole);
    assert_eq!(wal.append(&[entry(2)]).expect("appends").0, 3);
    wal.sync().expect("syncs");
    drop(wal);
    assert_eq!(open(dir.path(), 1 << 20).expect("reopens").1.len(), 3);
}

#[test]
fn an_entry_too_large_to_read_back_is_never_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, _) = open(dir.path(), 1 << 30).expect("opens");
    wal.append(&[entry(0)]).expect("appends");
    // Ids are short, so only a served request's lists can make an entry this large.
    let long_id = ItemId::parse("x".repeat(MAX_ID_BYTES)).expect("an item id");
    let huge = ServedRequest {
        request_id: RequestId::parse("r").expect("a request id"),
        time_ms: 0,
        user: None,
        surface: Surface::parse("home").expect("a surface"),
        history: Vec::new(),
        context: Default::default(),
        model_version: Version::parse("1").expect("a version"),
        variant: VariantName::parse("control").expect("a variant"),
        items: vec![long_id; MAX_PAYLOAD / MAX_ID_BYTES + 1],
        scores: Vec::new(),
        degraded: None,
    };
    let e = wal
        .append(&[entry(2), WalEntry::Served(huge)])
        .expect_err("too large");
    assert!(matches!(e, WalError::TooLarge(_)), "{e}");
    // Nothing of the refused batch was written; numbering goes on from the last good record.
    assert_eq!(wal.append(&[entry(3)]).expect("appends").0, 2);
    wal.sync().expect("syncs");
    drop(wal);
    assert_eq!(open(dir.path(), 1 << 30).expect("reopens").1.len(), 2);
}

#[test]
fn damage_in_a_closed_segment_is_reported_not_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, _) = open(dir.path(), 100).expect("opens");
    for i in 0..4 {
        wal.append(&[entry(i)]).expect("appends");
    }
    wal.sync().expect("syncs");
    drop(wal);
    let first = segments(dir.path()).expect("lists")[0].path.clone();
    let mut bytes = std::fs::read(&first).expect("reads");
    bytes[SEGMENT_HEADER + HEADER + 2] ^= 0xff;
    std::fs::write(&first, &bytes).expect("writes");
    let e = open(dir.path(), 100).expect_err("corrupt");
    assert!(e.to_string().contains("fails its checksum"), "{e}");
    assert!(
        e.to_string().contains(
            &first
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string()
        ),
        "{e}"
    );
}

/// Ten records in one segment, the fourth damaged in its middle; returns the segment and the damaged offset.
fn damaged_active_segment(dir: &Path) -> (PathBuf, u64) {
    let (mut wal, _) = open(dir, 1 << 20).expect("opens");
    for i in 0..10 {
        wal.append(&[entry(i)]).expect("appends");
    }
    wal.sync().expect("syncs");
    drop(wal);
    let path = segments(dir).expect("lists")[0].path.clone();
    let mut bytes = std::fs::read(&path).expect("reads");
    let mut offset = SEGMENT_HEADER;
    for _ in 0..3 {
        let (_, _, size) = parse_frame(&bytes[offset..]).expect("a good frame");
        offset += size;
    }
    bytes[offset + HEADER + 5] ^= 0x40;
    std::fs::write(&path, &bytes).expect("writes");
    (path, offset as u64)
}

#[test]
fn a_bad_frame_followed_by_good_ones_in_the_live_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, offset) = damaged_active_segment(dir.path());
    let size = std::fs::metadata(&path).expect("stat").len();
    let e = open(dir.path(), 1 << 20).expect_err("refused");
    match &e {
        WalError::Corrupt {
            path: at,
            offset: where_,
            ..
        } => assert_eq!((at, *where_), (&path, offset)),
        other => panic!("not corruption: {other}"),
    }
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        size,
        "nothing was cut away"
    );

    let report = repair(dir.path()).expect("repairs");
    assert_eq!(report.repaired.len(), 1, "{report:?}");
    let repaired = &report.repaired[0];
    assert_eq!(repaired.records_kept, 9);
    assert_eq!(repaired.missing_records, 1);
    assert_eq!(repaired.dropped.len(), 1);
    assert_eq!(repaired.dropped[0].offset, offset);
    assert!(repaired.kept_copy.exists());
    let (mut wal, replay) = open(dir.path(), 1 << 20).expect("opens after the repair");
    assert_eq!(seqs(&replay), [1, 2, 3, 5, 6, 7, 8, 9, 10]);
    assert_eq!(replay[3].1.entry, entry(4));
    assert_eq!(wal.append(&[entry(10)]).expect("appends").0, 11);
    wal.sync().expect("syncs");
    drop(wal);
    // A second repair finds nothing to do.
    assert!(repair(dir.path()).expect("repairs").repaired.is_empty());
    assert_eq!(open(dir.path(), 1 << 20).expect("opens").1.len(), 10);
}

#[test]
fn the_tail_follows_durable_records_across_segments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, _) = open(dir.path(), 400).expect("opens");
    let mut tail = WalTail::new(dir.path());
    let (read, next) = tail.read(1, 0, 10).expect("reads");
    assert!(read.is_empty());
    assert_eq!(next, 1);
    for i in 0..20 {
        wal.append(&[entry(i)]).expect("appends");
    }
    wal.sync().expect("syncs");
    assert!(segments(dir.path()).expect("lists").len() > 2);
    let mut got = Vec::new();
    let mut next = 1;
    loop {
        let (read, after) = tail.read(next, 15, 4).expect("reads");
        assert!(read.len() <= 4);
        if read.is_empty() {
            break;
        }
        got.extend(read.iter().map(|r| r.record.seq));
        assert!(read.iter().all(|r| r.incarnation == wal.incarnation()));
        next = after;
    }
    assert_eq!(
        got,
        (1..=15).collect::<Vec<_>>(),
        "never past what is durable"
    );
    let (read, next) = tail.read(16, 20, 100).expect("reads");
    assert_eq!(read.len(), 5);
    assert_eq!(next, 21);
    // A new tail positions itself anywhere in the log.
    let (read, _) = WalTail::new(dir.path()).read(7, 9, 100).expect("reads");
    assert_eq!(
        read.iter().map(|r| r.record.seq).collect::<Vec<_>>(),
        [7, 8, 9]
    );
}
