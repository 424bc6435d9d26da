//! The event log: write-ahead log segments become Parquet files, partitioned by the hour of the event (or of the
//! served request), in a local folder (the default) or an S3 bucket:
//!
//! ```text
//! events/date=2026-11-27/hour=09/<node>-<log incarnation>-<first sequence number of the segment, 20 digits>.parquet
//! served/date=2026-11-27/hour=09/<node>-<log incarnation>-<...>.parquet
//! ```
//!
//! A file's name depends only on the segment it came from, so shipping a segment twice rewrites the same files
//! with the same rows: shipping is idempotent; and since every opening of a node's log is a new incarnation, a
//! wiped or restored log never overwrites files shipped before. The trainer reads a time range back with [`EventLog::read`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder};
use arrow_array::{
    Array, ArrayRef, Float32Array, Int64Array, ListArray, RecordBatch, StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use aws_sdk_s3::primitives::ByteStream;
use edgerec_aws::{AwsConfig, Clients, describe};
use edgerec_core::{
    Digest, EventId, IdError, ItemId, RequestId, Surface, UserId, VariantName, Version,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::event::{Event, EventKind, ServedRequest};
use crate::wal::{Incarnation, WalEntry, WalRecord};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log {location}: {message}")]
    Io { location: String, message: String },
    #[error("event log file {key} is not a valid event log file: {message}")]
    Format { key: String, message: String },
}

/// Where the log's files go.
#[derive(Debug, Clone)]
pub enum EventLog {
    Folder(PathBuf),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

/// What shipping wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShipReport {
    pub segments: usize,
    pub files: usize,
    pub events: usize,
    pub served: usize,
}

impl ShipReport {
    pub fn add(&mut self, other: ShipReport) {
        self.segments += other.segments;
        self.files += other.files;
        self.events += other.events;
        self.served += other.served;
    }
}

/// An event as the log holds it: with the node, log incarnation and sequence number that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub node: String,
    /// Empty for files shipped before logs had incarnations.
    pub incarnation: String,
    pub seq: u64,
    pub event: Event,
}

/// A file read, for lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogFile {
    pub key: String,
    pub sha256: Digest,
}

/// A time range of the log.
#[derive(Debug, Clone, Default)]
pub struct LogSlice {
    /// Ordered by time, then node and sequence number; each event id once.
    pub events: Vec<LoggedEvent>,
    pub served: Vec<ServedRequest>,
    pub files: Vec<LogFile>,
}

const HOUR_MS: i64 = 3600 * 1000;

/// `(year, month, day)` of a day number counted from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The partition folder of a time: `date=YYYY-MM-DD/hour=HH`.
pub fn partition(time_ms: i64) -> String {
    let hour = time_ms.div_euclid(HOUR_MS);
    let (y, m, d) = civil_from_days(hour.div_euclid(24));
    format!("date={y:04}-{m:02}-{d:02}/hour={:02}", hour.rem_euclid(24))
}

/// The start of the hour a key's partition names, if it names one.
fn partition_start(key: &str) -> Option<i64> {
    let date = key.split("date=").nth(1)?.get(..10)?;
    let hour: i64 = key.split("hour=").nth(1)?.get(..2)?.parse().ok()?;
    let y: i64 = date.get(0..4)?.parse().ok()?;
    let m: u32 = date.get(5..7)?.parse().ok()?;
    let d: u32 = date.get(8..10)?.parse().ok()?;
    Some((days_from_civil(y, m, d) * 24 + hour) * HOUR_MS)
}

fn events_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::Utf8, false),
        Field::new("incarnation", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("item", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("time_ms", DataType::Int64, false),
        Field::new("value", DataType::Float32, true),
        Field::new("request_id", DataType::Utf8, true),
    ]))
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

fn served_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::Utf8, false),
        Field::new("incarnation", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("request_id", DataType::Utf8, false),
        Field::new("time_ms", DataType::Int64, false),
        Field::new("user", DataType::Utf8, true),
        Field::new("surface", DataType::Utf8, false),
        Field::new("history", list_of(DataType::Utf8), false),
        Field::new("context", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("items", list_of(DataType::Utf8), false),
        Field::new("scores", list_of(DataType::Float32), false),
        Field::new("degraded", DataType::Utf8, true),
    ]))
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn string_lists<'a>(rows: impl Iterator<Item = &'a [ItemId]>) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for row in rows {
        for value in row {
            builder.values().append_value(value.as_str());
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn to_parquet(batch: &RecordBatch) -> Vec<u8> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties))
        .expect("the schema is valid");
    writer.write(batch).expect("writing to memory");
    writer.close().expect("writing to memory");
    bytes
}

fn events_file(node: &str, incarnation: &str, rows: &[(u64, &Event)]) -> Vec<u8> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|_| node)),
        strings(rows.iter().map(|_| incarnation)),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
        strings(rows.iter().map(|r| r.1.id.as_str())),
        strings(rows.iter().map(|r| r.1.user.as_str())),
        strings(rows.iter().map(|r| r.1.item.as_str())),
        strings(rows.iter().map(|r| r.1.kind.name())),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.1.time_ms),
        )),
        Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.1.value))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.1.request_id.as_deref()),
        )),
    ];
    to_parquet(&RecordBatch::try_new(events_schema(), columns).expect("columns match the schema"))
}

fn served_file(node: &str, incarnation: &str, rows: &[(u64, &ServedRequest)]) -> Vec<u8> {
    let mut scores = ListBuilder::new(Float32Builder::new());
    for (_, served) in rows {
        scores.values().append_slice(&served.scores);
        scores.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|_| node)),
        strings(rows.iter().map(|_| incarnation)),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
        strings(rows.iter().map(|r| r.1.request_id.as_str())),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.1.time_ms),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.1.user.as_deref()),
        )),
        strings(rows.iter().map(|r| r.1.surface.as_str())),
        string_lists(rows.iter().map(|r| r.1.history.as_slice())),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| {
            serde_json::to_string(&r.1.context).expect("numbers by name serialise")
        }))),
        strings(rows.iter().map(|r| r.1.model_version.as_str())),
        strings(rows.iter().map(|r| r.1.variant.as_str())),
        string_lists(rows.iter().map(|r| r.1.items.as_slice())),
        Arc::new(scores.finish()),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.1.degraded.as_deref()),
        )),
    ];
    to_parquet(&RecordBatch::try_new(served_schema(), columns).expect("columns match the schema"))
}

struct Columns<'a> {
    key: &'a str,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn get<T: 'static>(&self, name: &str) -> Result<&'a T, LogError> {
        self.batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| LogError::Format {
                key: self.key.to_owned(),
                message: format!("column `{name}` is missing or of another type"),
            })
    }

    fn text(&self, name: &str) -> Result<&'a StringArray, LogError> {
        self.get::<StringArray>(name)
    }

    fn item_ids(&self, name: &str, row: usize) -> Result<Vec<ItemId>, LogError> {
        let values = self.get::<ListArray>(name)?.value(row);
        let values = values
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| self.bad(format!("`{name}` is not a list of strings")))?;
        ItemId::parse_all(values.iter().map(Option::unwrap_or_default))
            .map_err(|e| self.bad(format!("row {row}, `{name}`: {e}")))
    }

    /// The id in `column` at `row`, parsed by the one rule for its kind: a file holding a bad id is damaged.
    fn id<T>(
        &self,
        column: &StringArray,
        row: usize,
        parse: impl FnOnce(String) -> Result<T, IdError>,
    ) -> Result<T, LogError> {
        self.parsed(row, column.value(row).to_owned(), parse)
    }

    fn parsed<T>(
        &self,
        row: usize,
        text: String,
        parse: impl FnOnce(String) -> Result<T, IdError>,
    ) -> Result<T, LogError> {
        parse(text).map_err(|e| self.bad(format!("row {row}: {e}")))
    }

    fn bad(&self, message: String) -> LogError {
        LogError::Format {
            key: self.key.to_owned(),
            message,
        }
    }
}

fn optional(column: &StringArray, row: usize) -> Option<String> {
    column.is_valid(row).then(|| column.value(row).to_owned())
}

fn batches(key: &str, bytes: Vec<u8>) -> Result<Vec<RecordBatch>, LogError> {
    let format = |e: &dyn std::fmt::Display| LogError::Format {
        key: key.to_owned(),
        message: e.to_string(),
    };
    ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| format(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format(&e))
}

fn read_events(key: &str, bytes: Vec<u8>, out: &mut Vec<LoggedEvent>) -> Result<(), LogError> {
    for batch in batches(key, bytes)? {
        let c = Columns { key, batch: &batch };
        // Files shipped before logs had incarnations lack the column.
        let incarnation = c.get::<StringArray>("incarnation").ok();
        let (node, seq, id, user, item, kind, time, value, request) = (
            c.text("node")?,
            c.get::<UInt64Array>("seq")?,
            c.text("id")?,
            c.text("user")?,
            c.text("item")?,
            c.text("kind")?,
            c.get::<Int64Array>("time_ms")?,
            c.get::<Float32Array>("value")?,
            c.text("request_id")?,
        );
        for row in 0..batch.num_rows() {
            let kind = EventKind::from_name(kind.value(row))
                .ok_or_else(|| c.bad(format!("unknown kind `{}`", kind.value(row))))?;
            out.push(LoggedEvent {
                node: node.value(row).to_owned(),
                incarnation: incarnation.map_or_else(String::new, |c| c.value(row).to_owned()),
                seq: seq.value(row),
                event: Event {
                    id: c.id(id, row, EventId::parse)?,
                    user: c.id(user, row, UserId::parse)?,
                    item: c.id(item, row, ItemId::parse)?,
                    kind,
                    time_ms: time.value(row),
                    value: value.is_valid(row).then(|| value.value(row)),
                    request_id: optional(request, row)
                        .map(|text| c.parsed(row, text, RequestId::parse))
                        .transpose()?,
                },
            });
        }
    }
    Ok(())
}

fn read_served(key: &str, bytes: Vec<u8>, out: &mut Vec<ServedRequest>) -> Result<(), LogError> {
    for batch in batches(key, bytes)? {
        let c = Columns { key, batch: &batch };
        let request = c.text("request_id")?;
        let time = c.get::<Int64Array>("time_ms")?;
        let user = c.text("user")?;
        let surface = c.text("surface")?;
        let context = c.text("context")?;
        let version = c.text("model_version")?;
        let variant = c.text("variant")?;
        let scores = c.get::<ListArray>("scores")?;
        let degraded = c.text("degraded")?;
        for row in 0..batch.num_rows() {
            let row_scores = scores.value(row);
            let row_scores = row_scores
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| c.bad("`scores` is not a list of floats".into()))?;
            out.push(ServedRequest {
                request_id: c.id(request, row, RequestId::parse)?,
                time_ms: time.value(row),
                user: optional(user, row)
                    .map(|text| c.parsed(row, text, UserId::parse))
                    .transpose()?,
                surface: c.id(surface, row, Surface::parse)?,
                history: c.item_ids("history", row)?,
                context: serde_json::from_str(context.value(row))
                    .map_err(|e| c.bad(format!("`context`: {e}")))?,
                model_version: c.id(version, row, Version::parse)?,
                variant: c.id(variant, row, VariantName::parse)?,
                items: c.item_ids("items", row)?,
                scores: row_scores.values().to_vec(),
                degraded: optional(degraded, row),
            });
        }
    }
    Ok(())
}

impl EventLog {
    pub fn s3(config: &AwsConfig) -> Self {
        EventLog::S3 {
            client: Clients::connect(config).s3,
            bucket: config.bucket.clone(),
        }
    }

    /// Where the log is, for messages: a folder path or `s3://bucket`.
    pub fn describe(&self) -> String {
        match self {
            EventLog::Folder(dir) => dir.display().to_string(),
            EventLog::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }

    /// Creates the bucket (S3) or folder unless it exists.
    pub async fn ensure_created(&self) -> Result<(), LogError> {
        match self {
            EventLog::Folder(dir) => std::fs::create_dir_all(dir).map_err(|e| LogError::Io {
                location: dir.display().to_string(),
                message: e.to_string(),
            }),
            EventLog::S3 { client, bucket } => edgerec_aws::ensure_bucket(client, bucket)
                .await
                .map_err(|message| LogError::Io {
                    location: format!("s3://{bucket}"),
                    message,
                }),
        }
    }

    /// Writes the Parquet files of one segment and returns once every one is confirmed written.
    pub async fn ship_segment(
        &self,
        node: &str,
        incarnation: Incarnation,
        first_seq: u64,
        records: &[WalRecord],
    ) -> Result<ShipReport, LogError> {
        let mut events: BTreeMap<String, Vec<(u64, &Event)>> = BTreeMap::new();
        let mut served: BTreeMap<String, Vec<(u64, &ServedRequest)>> = BTreeMap::new();
        for record in records {
            match &record.entry {
                WalEntry::Event(e) => events
                    .entry(partition(e.time_ms))
                    .or_default()
                    .push((record.seq, e)),
                WalEntry::Served(s) => served
                    .entry(partition(s.time_ms))
                    .or_default()
                    .push((record.seq, s)),
            }
        }
        let name = format!("{node}-{incarnation}-{first_seq:020}.parquet");
        let incarnation = incarnation.to_string();
        let mut report = ShipReport::default();
        for (partition, rows) in &events {
            self.put(
                &format!("events/{partition}/{name}"),
                events_file(node, &incarnation, rows),
            )
            .await?;
            report.files += 1;
            report.events += rows.len();
        }
        for (partition, rows) in &served {
            self.put(
                &format!("served/{partition}/{name}"),
                served_file(node, &incarnation, rows),
            )
            .await?;
            report.files += 1;
            report.served += rows.len();
        }
        Ok(report)
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), LogError> {
        match self {
            EventLog::Folder(dir) => {
                let path = dir.join(key);
                let io = |e: std::io::Error| LogError::Io {
                    location: path.display().to_string(),
                    message: e.to_string(),
                };
                let parent = path.parent().expect("keys have folders");
                std::fs::create_dir_all(parent).map_err(io)?;
                let temporary = path.with_extension("parquet.partial");
                let write = || -> std::io::Result<()> {
                    let file = std::fs::File::create(&temporary)?;
                    std::io::Write::write_all(&mut &file, &bytes)?;
                    file.sync_all()?;
                    std::fs::rename(&temporary, &path)?;
                    std::fs::File::open(parent)?.sync_all()
                };
                write().map_err(io)
            }
            EventLog::S3 { client, bucket } => client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| LogError::Io {
                    location: format!("s3://{bucket}/{key}"),
                    message: describe("writing", e),
                }),
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, LogError> {
        match self {
            EventLog::Folder(dir) => std::fs::read(dir.join(key)).map_err(|e| LogError::Io {
                location: dir.join(key).display().to_string(),
                message: e.to_string(),
            }),
            EventLog::S3 { client, bucket } => {
                let location = || format!("s3://{bucket}/{key}");
                let out = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| LogError::Io {
                        location: location(),
                        message: describe("reading", e),
                    })?;
                let body = out.body.collect().await.map_err(|e| LogError::Io {
                    location: location(),
                    message: e.to_string(),
                })?;
                Ok(body.into_bytes().to_vec())
            }
        }
    }

    /// Every file key under `prefix` (`events/` or `served/`), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, LogError> {
        let mut keys = Vec::new();
        match self {
            EventLog::Folder(dir) => {
                fn walk(root: &Path, dir: &Path, keys: &mut Vec<String>) -> std::io::Result<()> {
                    if !dir.exists() {
                        return Ok(());
                    }
                    for entry in std::fs::read_dir(dir)? {
                        let path = entry?.path();
                        if path.is_dir() {
                            walk(root, &path, keys)?;
                        } else if path.extension().is_some_and(|e| e == "parquet")
                            && let Ok(relative) = path.strip_prefix(root)
                        {
                            keys.push(relative.to_string_lossy().into_owned());
                        }
                    }
                    Ok(())
                }
                walk(dir, &dir.join(prefix), &mut keys).map_err(|e| LogError::Io {
                    location: dir.display().to_string(),
                    message: e.to_string(),
                })?;
            }
            EventLog::S3 { client, bucket } => {
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| LogError::Io {
                        location: format!("s3://{bucket}/{prefix}"),
                        message: describe("listing", e),
                    })?;
                    keys.extend(
                        page.contents()
                            .iter()
                            .filter_map(|o| o.key().map(str::to_owned)),
                    );
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The rows of one events file (`events/...`), as written.
    pub async fn events_of(&self, key: &str) -> Result<Vec<LoggedEvent>, LogError> {
        let mut events = Vec::new();
        read_events(key, self.get(key).await?, &mut events)?;
        Ok(events)
    }

    /// Every event and served request with `from_ms <= time < to_ms`, and the files read.
    pub async fn read(&self, from_ms: i64, to_ms: i64) -> Result<LogSlice, LogError> {
        let mut slice = LogSlice::default();
        let in_range = |key: &String| {
            partition_start(key).is_some_and(|start| start < to_ms && start + HOUR_MS > from_ms)
        };
        for key in self.list("events/").await?.into_iter().filter(in_range) {
            let bytes = self.get(&key).await?;
            slice.files.push(LogFile {
                key: key.clone(),
                sha256: Digest::of(&bytes),
            });
            read_events(&key, bytes, &mut slice.events)?;
        }
        for key in self.list("served/").await?.into_iter().filter(in_range) {
            let bytes = self.get(&key).await?;
            slice.files.push(LogFile {
                key: key.clone(),
                sha256: Digest::of(&bytes),
            });
            read_served(&key, bytes, &mut slice.served)?;
        }
        slice
            .events
            .retain(|e| e.event.time_ms >= from_ms && e.event.time_ms < to_ms);
        slice.events.sort_by(|a, b| {
            (a.event.time_ms, &a.node, &a.incarnation, a.seq).cmp(&(
                b.event.time_ms,
                &b.node,
                &b.incarnation,
                b.seq,
            ))
        });
        // Two nodes may each have taken one retried event: the log keeps the first.
        let mut ids = BTreeSet::new();
        slice.events.retain(|e| ids.insert(e.event.id.clone()));
        slice
            .served
            .retain(|s| s.time_ms >= from_ms && s.time_ms < to_ms);
        slice
            .served
            .sort_by(|a, b| (a.time_ms, &a.request_id).cmp(&(b.time_ms, &b.request_id)));
        Ok(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_name_the_utc_hour() {
        assert_eq!(partition(0), "date=1970-01-01/hour=00");
        // 2026-11-27T09:30:00Z
        let t = 1_795_771_800_000;
        assert_eq!(partition(t), "date=2026-11-27/hour=09");
        assert_eq!(
            partition_start(&format!("events/{}/n-1.parquet", partition(t))),
            Some(t - 30 * 60 * 1000)
        );
        assert_eq!(partition(951_782_400_000 - 1), "date=2000-02-28/hour=23");
        assert_eq!(partition(951_868_800_000), "date=2000-03-01/hour=00");
    }
}
