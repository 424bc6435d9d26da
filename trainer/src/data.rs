//! Interaction logs and item metadata: MovieLens `ratings.dat` and `u.data`, RecBole atomic `.inter` / `.item`,
//! and a generic CSV/TSV with a `user,item,timestamp[,value]` header.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use edgerec_core::{ItemId, UserId};
use edgerec_features::catalogue::CatalogueError;
use edgerec_features::item::ItemMetadata;

/// One interaction: a user and an item at a time (seconds), with an optional value (a rating).
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    pub user: UserId,
    pub item: ItemId,
    pub timestamp: i64,
    pub value: Option<f32>,
}

impl Interaction {
    /// An interaction from ids that are already known to be good (tests, generated data); panics on a bad one,
    /// naming it.
    pub fn from_good_ids(user: &str, item: &str, timestamp: i64) -> Self {
        fn good<T>(parsed: Result<T, edgerec_core::IdError>) -> T {
            parsed.unwrap_or_else(|e| panic!("{e}"))
        }
        Self {
            user: good(UserId::parse(user)),
            item: good(ItemId::parse(item)),
            timestamp,
            value: None,
        }
    }
}

/// Interactions in file order, and item metadata where the dataset has it.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub name: String,
    pub interactions: Vec<Interaction>,
    pub items: BTreeMap<ItemId, ItemMetadata>,
}

/// Data that cannot be read, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no interactions")]
    Empty { path: PathBuf },
    #[error("{path}: the header has no `{column}` column (found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        found: String,
    },
    #[error("{path}, line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("unknown data format of {path}: expected ratings.dat, u.data, .inter, .csv or .tsv")]
    UnknownFormat { path: PathBuf },
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
}

/// The layouts [`read_interactions`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `user::item::rating::timestamp` (MovieLens-1M `ratings.dat`).
    MovieLensDat,
    /// `user<TAB>item<TAB>rating<TAB>timestamp` (MovieLens-100k `u.data`).
    MovieLensUData,
    /// RecBole atomic file: a `name:type` header, tab-separated.
    AtomicInter,
    /// A header naming `user`, `item`, `timestamp` and optionally `value` (or `rating`), comma- or tab-separated.
    Delimited(u8),
}

impl Format {
    /// The format a file name implies.
    pub fn of(path: &Path) -> Result<Self, DataError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        Ok(match (name, extension) {
            ("ratings.dat", _) => Format::MovieLensDat,
            ("u.data", _) => Format::MovieLensUData,
            (_, "inter") => Format::AtomicInter,
            (_, "csv") => Format::Delimited(b','),
            (_, "tsv") => Format::Delimited(b'\t'),
            _ => return Err(DataError::UnknownFormat { path: path.into() }),
        })
    }
}

/// Reads interactions from a file in the format its name implies.
pub fn read_interactions(path: &Path) -> Result<Vec<Interaction>, DataError> {
    let format = Format::of(path)?;
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.into(),
        source,
    })?;
    parse_interactions(std::io::BufReader::new(file), format, path)
}

/// Parses interactions; `path` only names the source in errors.
pub fn parse_interactions(
    reader: impl BufRead,
    format: Format,
    path: &Path,
) -> Result<Vec<Interaction>, DataError> {
    let bad = |line: usize, reason: String| DataError::BadLine {
        path: path.into(),
        line,
        reason,
    };
    let mut lines = reader.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut interactions = Vec::new();
    // Column positions of user, item, timestamp and value.
    let (separator, columns): (&str, [Option<usize>; 4]) = match format {
        Format::MovieLensDat => ("::", [Some(0), Some(1), Some(3), Some(2)]),
        Format::MovieLensUData => ("\t", [Some(0), Some(1), Some(3), Some(2)]),
        Format::AtomicInter | Format::Delimited(_) => {
            let separator = if format == Format::Delimited(b',') {
                ","
            } else {
                "\t"
            };
            let header = match lines.next() {
                Some((_, line)) => line.map_err(|source| DataError::Io {
                    path: path.into(),
                    source,
                })?,
                None => return Err(DataError::Empty { path: path.into() }),
            };
            let names: Vec<String> = header
                .trim_end_matches('\r')
                .split(separator)
                .map(|c| {
                    c.split(':')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                })
                .collect();
            let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
            let require = |column: &'static str, wanted: &[&str]| {
                find(wanted).ok_or_else(|| DataError::MissingColumn {
                    path: path.into(),
                    column,
                    found: names.join(", "),
                })
            };
            let user = require("user", &["user", "user_id", "userid"])?;
            let item = require("item", &["item", "item_id", "itemid", "movieid"])?;
            let timestamp = require("timestamp", &["timestamp", "time", "ts"])?;
            let value = find(&["value", "rating"]);
            (separator, [Some(user), Some(item), Some(timestamp), value])
        }
    };
    for (number, line) in lines {
        let line = line.map_err(|source| DataError::Io {
            path: path.into(),
            source,
        })?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(separator).collect();
        let field = |ix: usize, name: &str| {
            fields
                .get(ix)
                .copied()
                .ok_or_else(|| bad(number, format!("no {name} field ({} fields)", fields.len())))
        };
        let [user, item, timestamp, value] = columns;
        let user = field(user.unwrap_or_default(), "user")?.trim();
        let item = field(item.unwrap_or_default(), "item")?.trim();
        // The one rule for ids: what trains is what nodes, events and bundles accept.
        let user = UserId::parse(user).map_err(|e| bad(number, e.to_string()))?;
        let item = ItemId::parse(item).map_err(|e| bad(number, e.to_string()))?;
        let ts_text = field(timestamp.unwrap_or_default(), "timestamp")?.trim();
        // RecBole writes timestamps as floats ("978300760.0").
        let timestamp = ts_text
            .parse::<i64>()
            .ok()
            .or_else(|| {
                ts_text
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite())
                    .map(|t| t as i64)
            })
            .ok_or_else(|| bad(number, format!("timestamp `{ts_text}` is not a number")))?;
        let value = match value {
            Some(ix) => {
                let text = field(ix, "value")?.trim();
                Some(
                    text.parse::<f32>()
                        .map_err(|_| bad(number, format!("value `{text}` is not a number")))?,
                )
            }
            None => None,
        };
        interactions.push(Interaction {
            user,
            item,
            timestamp,
            value,
        });
    }
    if interactions.is_empty() {
        return Err(DataError::Empty { path: path.into() });
    }
    Ok(interactions)
}

/// The interactions of users and items that each have at least `k` of them, filtered until that holds for both
/// (the "k-core" published benchmarks of sparse data use); order is kept.
pub fn k_core(mut interactions: Vec<Interaction>, k: usize) -> Vec<Interaction> {
    loop {
        let mut users: HashMap<&str, usize> = HashMap::new();
        let mut items: HashMap<&str, usize> = HashMap::new();
        for i in &interactions {
            *users.entry(&i.user).or_default() += 1;
            *items.entry(&i.item).or_default() += 1;
        }
        let keep: Vec<bool> = interactions
            .iter()
            .map(|i| users[i.user.as_str()] >= k && items[i.item.as_str()] >= k)
            .collect();
        if keep.iter().all(|&kept| kept) {
            return interactions;
        }
        let mut kept = keep.into_iter();
        interactions.retain(|_| kept.next().unwrap_or(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, format: Format) -> Result<Vec<Interaction>, DataError> {
        parse_interactions(text.as_bytes(), format, Path::new("test"))
    }

    /// Dropping a user below k can take an item below k, and so on: the filter repeats until both hold.
    #[test]
    fn the_k_core_filter_repeats_until_users_and_items_hold() {
        let mut text = String::from("user,item,timestamp\n");
        // u0..u2 each have items a, b; u3 has a, b and c; c has one more user, u4, who has only c.
        for user in 0..4 {
            text.push_str(&format!("u{user},a,1\nu{user},b,2\n"));
        }
        text.push_str("u3,c,3\nu4,c,1\n");
        let log = parse(&text, Format::Delimited(b',')).expect("parses");
        let core = k_core(log.clone(), 2);
        // u4 goes (one interaction), then c (one user left), and u3 keeps a and b.
        assert_eq!(core.len(), 8);
        assert!(core.iter().all(|i| i.item != "c" && i.user != "u4"));
        assert_eq!(k_core(log, 5), vec![]);
    }

    #[test]
    fn reads_every_format() {
        let dat = parse(
            "1::1193::5::978300760\n1::661::3::978302109\n",
            Format::MovieLensDat,
        )
        .expect("dat");
        assert_eq!(
            dat[1],
            Interaction {
                value: Some(3.0),
                ..Interaction::from_good_ids("1", "661", 978302109)
            }
        );
        let udata = parse("196\t242\t3\t881250949\n", Format::MovieLensUData).expect("u.data");
        assert_eq!(udata[0].item, "242");
        let atomic = parse(
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1m_1\tToy Story (1995)\t5\t978300760.0\n",
            Format::AtomicInter,
        )
        .expect("atomic");
        assert_eq!(
            (atomic[0].item.as_str(), atomic[0].timestamp),
            ("Toy Story (1995)", 978300760)
        );
        let csv = parse(
            "timestamp,item,user\r\n10,a,u1\r\n\r\n11,b,u1\r\n",
            Format::Delimited(b','),
        )
        .expect("csv");
        assert_eq!(csv.len(), 2);
        assert_eq!((csv[1].user.as_str(), csv[1].value), ("u1", None));
    }

    #[test]
    fn bad_data_gets_a_precise_error() {
        let err =
            parse("user,item\nu,a\n", Format::Delimited(b',')).expect_err("no timestamp column");
        assert!(
            matches!(
                err,
                DataError::MissingColumn {
                    column: "timestamp",
                    ..
                }
            ),
            "{err}"
        );
        let err = parse(
            "user,item,timestamp\nu,a,yesterday\n",
            Format::Delimited(b','),
        )
        .expect_err("bad time");
        assert!(
            matches!(&err, DataError::BadLine { line: 2, reason, .. } if reason.contains("yesterday")),
            "{err}"
        );
        let err = parse("1::2::5\n", Format::MovieLensDat).expect_err("short line");
        assert!(matches!(err, DataError::BadLine { line: 1, .. }), "{err}");
        assert!(matches!(
            parse("", Format::MovieLensDat),
            Err(DataError::Empty { .. })
        ));
        assert!(matches!(
            parse("", Format::Delimited(b',')),
            Err(DataError::Empty { .. })
        ));
        assert!(matches!(
            parse("user,item,timestamp\n", Format::Delimited(b',')),
            Err(DataError::Empty { .. })
        ));
        let err = parse(
            "user,item,timestamp,value\nu,a,1,five\n",
            Format::Delimited(b','),
        )
        .expect_err("value");
        assert!(matches!(err, DataError::BadLine { line: 2, .. }), "{err}");
        // Ids by core's one rule, as nodes and the event ingest take them.
        let long = "x".repeat(edgerec_core::MAX_ID_BYTES + 1);
        for (text, reason) in [
            ("user,item,timestamp\nu,a,1\n ,b,2\n", "user id is empty"),
            (
                "user\titem\ttimestamp\nu\ta\x07b\t1\n",
                "item id holds a control character",
            ),
            (
                &format!("user,item,timestamp\nu,{long},1\n"),
                "item id is 257 bytes long",
            ),
        ] {
            let format = if text.contains('\t') {
                Format::Delimited(b'\t')
            } else {
                Format::Delimited(b',')
            };
            let err = parse(text, format).expect_err(reason);
            assert!(
                matches!(&err, DataError::BadLine { reason: r, .. } if r.contains(reason)),
                "{err} should say {reason}"
            );
        }
        assert!(matches!(
            Format::of(Path::new("x.parquet")),
            Err(DataError::UnknownFormat { .. })
        ));
    }
}
