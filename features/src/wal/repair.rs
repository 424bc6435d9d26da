//! `edgerec events repair`: salvages every readable record of a damaged log. A damaged segment is copied to
//! `damaged/` beside the log first, then replaced by a segment of the records that read back, under their
//! own numbers and incarnation, flagged as repaired (its numbers may skip what was dropped). What was dropped is
//! reported byte range by byte range.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    FLAG_REPAIRED, Incarnation, MAGIC, SEGMENT_HEADER, Segment, WalEntry, WalError, create_segment,
    io, next_good_frame, parse_frame, scan_segment, segments, sync_parent,
};

/// A stretch of a segment that did not read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub offset: u64,
    pub bytes: u64,
}

/// What repair did to one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairedSegment {
    pub segment: PathBuf,
    /// Where the damaged original was kept.
    pub kept_copy: PathBuf,
    pub records_kept: u64,
    pub dropped: Vec<Dropped>,
    /// Numbers missing between the records kept (and before the first one).
    pub missing_records: u64,
    /// The segment's header was unreadable: its records were given a new incarnation, so a store that had applied
    /// some of them under the old one applies those again.
    pub new_incarnation: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    pub segments_checked: usize,
    pub repaired: Vec<RepairedSegment>,
}

/// Repairs the log in `dir` (no process may have it open).
pub fn repair(dir: &Path) -> Result<RepairReport, WalError> {
    let found = segments(dir)?;
    let mut report = RepairReport {
        segments_checked: found.len(),
        ..RepairReport::default()
    };
    let mut previous_last: Option<u64> = None;
    for (i, segment) in found.iter().enumerate() {
        let active = i + 1 == found.len();
        let checked = scan_segment(segment, active, |_, _| Ok::<_, WalError>(()));
        let gap = |first: u64| previous_last.is_some_and(|last| first != last + 1);
        match checked {
            Ok(summary) if summary.repaired || !gap(segment.first_seq) || summary.records == 0 => {
                previous_last = summary.last_seq.or(previous_last);
            }
            Ok(_) | Err(WalError::Corrupt { .. }) => {
                let repaired = salvage(dir, segment, previous_last)?;
                if let Some(last) = repaired.1 {
                    previous_last = Some(last);
                }
                report.repaired.push(repaired.0);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// Rewrites `segment` with the records that read back; returns what it did and the last number kept.
fn salvage(
    dir: &Path,
    segment: &Segment,
    previous_last: Option<u64>,
) -> Result<(RepairedSegment, Option<u64>), WalError> {
    let bytes = std::fs::read(&segment.path).map_err(|e| io(&segment.path, e))?;
    let header_ok = bytes.len() >= SEGMENT_HEADER
        && &bytes[0..8] == MAGIC
        && crc32fast::hash(&bytes[0..20])
            == u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let (incarnation, mut at) = if header_ok {
        (
            Incarnation(u64::from_le_bytes(
                bytes[8..16].try_into().expect("8 bytes"),
            )),
            SEGMENT_HEADER as u64,
        )
    } else {
        (Incarnation::random(), 0)
    };
    let mut after = previous_last.unwrap_or(segment.first_seq.saturating_sub(1));
    let expected_first = after + 1;
    let mut frames = Vec::new();
    let mut dropped = Vec::new();
    let (mut kept, mut first_kept, mut last_kept) = (0u64, None, None);
    while (at as usize) < bytes.len() {
        let good = parse_frame(&bytes[at as usize..])
            .ok()
            .filter(|(seq, payload, _)| {
                *seq > after && serde_json::from_slice::<WalEntry>(payload).is_ok()
            });
        match good {
            Some((seq, payload, size)) => {
                super::push_frame(seq, payload, &mut frames);
                first_kept.get_or_insert(seq);
                last_kept = Some(seq);
                after = seq;
                kept += 1;
                at += size as u64;
            }
            None => {
                let next = next_good_frame(&bytes, 0, at + 1, after).unwrap_or(bytes.len() as u64);
                dropped.push(Dropped {
                    offset: at,
                    bytes: next - at,
                });
                at = next;
            }
        }
    }
    let missing = last_kept.map_or(0, |last| last + 1 - expected_first - kept);
    // Keep the damaged original before anything replaces it.
    let damaged_dir = dir.join("damaged");
    std::fs::create_dir_all(&damaged_dir).map_err(|e| io(&damaged_dir, e))?;
    let name = segment
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kept_copy = damaged_dir.join(format!("{name}.{}", crate::now_ms()));
    std::fs::copy(&segment.path, &kept_copy).map_err(|e| io(&kept_copy, e))?;
    std::fs::File::open(&kept_copy)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(&kept_copy, e))?;
    sync_parent(&kept_copy)?;
    match first_kept {
        Some(first) => {
            create_segment(dir, first, incarnation, FLAG_REPAIRED, &frames)?;
            if first != segment.first_seq {
                std::fs::remove_file(&segment.path).map_err(|e| io(&segment.path, e))?;
                sync_parent(&segment.path)?;
            }
        }
        None => {
            std::fs::remove_file(&segment.path).map_err(|e| io(&segment.path, e))?;
            sync_parent(&segment.path)?;
        }
    }
    Ok((
        RepairedSegment {
            segment: segment.path.clone(),
            kept_copy,
            records_kept: kept,
            dropped,
            missing_records: missing,
            new_incarnation: !header_ok && kept > 0,
        },
        last_kept,
    ))
}
