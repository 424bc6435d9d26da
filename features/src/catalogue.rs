//! The scheduled item refresh: item metadata from a catalogue file, popularity recomputed from the event log.
//!
//! Catalogue formats, told apart by name: MovieLens `movies.dat` (`id::Title (Year)::Genre|Genre`, Latin-1),
//! MovieLens `u.item` (`id|title|date|video date|url|19 genre flags`), RecBole atomic `.item` (tab-separated with a
//! typed header: `item_id`, `movie_title` or `title`, `genre`/`genres`/`class` of space-separated tokens) and CSV
//! with an `item,title,genres` header (genres separated by `|`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgerec_core::ItemId;
use serde::Serialize;

use crate::item::{ItemFeatures, ItemMetadata, Popularity};
use crate::log::LoggedEvent;
use crate::store::{FeatureSettings, FeatureStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} names no items")]
    Empty { path: PathBuf },
    #[error(
        "{path}: unknown catalogue format (expected movies.dat, u.item, a RecBole .item file or a .csv with an item,title,genres header)"
    )]
    UnknownFormat { path: PathBuf },
}

/// u.item's 19 genre flags, in order.
const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// Reads a catalogue file into metadata by item id.
pub fn read_catalogue(path: &Path) -> Result<BTreeMap<ItemId, ItemMetadata>, CatalogueError> {
    let bytes = std::fs::read(path).map_err(|source| CatalogueError::Io {
        path: path.into(),
        source,
    })?;
    // MovieLens files are Latin-1; every byte maps to the code point of the same value.
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => e.into_bytes().iter().map(|&b| char::from(b)).collect(),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let line_error = |line: usize, reason: &str| CatalogueError::Line {
        path: path.into(),
        line,
        reason: reason.into(),
    };
    let item_id =
        |line: usize, text: &str| ItemId::parse(text).map_err(|e| line_error(line, &e.to_string()));
    let mut items = BTreeMap::new();
    if name.ends_with(".dat") {
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let fields: Vec<&str> = line.split("::").collect();
            let [id, title, genres] = fields[..] else {
                return Err(line_error(n + 1, "expected `id::title::genres`"));
            };
            items.insert(
                item_id(n + 1, id)?,
                ItemMetadata {
                    title: title.to_owned(),
                    genres: genres
                        .split('|')
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect(),
                },
            );
        }
    } else if name == "u.item" {
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let fields: Vec<&str> = line.split('|').collect();
            if fields.len() != 5 + ML100K_GENRES.len() {
                return Err(line_error(n + 1, "expected 24 `|`-separated fields"));
            }
            let genres = ML100K_GENRES
                .iter()
                .zip(&fields[5..])
                .filter(|(_, flag)| **flag == "1")
                .map(|(g, _)| (*g).to_owned())
                .collect();
            items.insert(
                item_id(n + 1, fields[0])?,
                ItemMetadata {
                    title: fields[1].to_owned(),
                    genres,
                },
            );
        }
    } else if name.ends_with(".item") || name.ends_with(".csv") {
        let separator = if name.ends_with(".csv") { ',' } else { '\t' };
        let mut lines = text.lines().enumerate();
        let (_, header) = lines
            .next()
            .ok_or_else(|| CatalogueError::Empty { path: path.into() })?;
        let names: Vec<&str> = header
            .split(separator)
            .map(|c| c.split(':').next().unwrap_or_default().trim())
            .collect();
        let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(n));
        let id = find(&["item_id", "item"])
            .ok_or_else(|| line_error(1, "no `item` or `item_id` column"))?;
        let title = find(&["movie_title", "title"]);
        let genres = find(&["genre", "genres", "class"]);
        let genre_separator = if separator == ',' { '|' } else { ' ' };
        for (n, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split(separator).collect();
            let item = fields
                .get(id)
                .filter(|i| !i.is_empty())
                .ok_or_else(|| line_error(n + 1, "no item id"))?;
            items.insert(
                item_id(n + 1, item)?,
                ItemMetadata {
                    title: title
                        .and_then(|t| fields.get(t))
                        .map_or_else(|| (*item).to_owned(), |t| (*t).to_owned()),
                    genres: genres
                        .and_then(|g| fields.get(g))
                        .map(|g| {
                            g.split(genre_separator)
                                .filter(|g| !g.is_empty())
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                },
            );
        }
    } else {
        return Err(CatalogueError::UnknownFormat { path: path.into() });
    }
    if items.is_empty() {
        return Err(CatalogueError::Empty { path: path.into() });
    }
    Ok(items)
}

/// What a refresh wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefreshReport {
    pub items: usize,
    /// Items of the catalogue no logged event names: they got the prior.
    pub cold_items: usize,
    /// Items in the log that the catalogue lacks: popularity only.
    pub uncatalogued_items: usize,
    pub events: usize,
}

/// Item features from `catalogue` and the logged `events`: popularity is the decayed count of each item's events
/// as of the latest one; items without events start at `prior` (worth that many fresh interactions). The result
/// depends only on the inputs, so running the refresh twice writes the same features. The figures replace what the
/// streaming updates built, so events acknowledged but not yet shipped when the refresh reads the log count again
/// only from the next refresh on (minutes of data, at the shipping interval).
pub fn item_features(
    catalogue: &BTreeMap<ItemId, ItemMetadata>,
    events: &[LoggedEvent],
    settings: &FeatureSettings,
    prior: f64,
) -> (Vec<(ItemId, ItemFeatures)>, RefreshReport) {
    let mut features: BTreeMap<&ItemId, ItemFeatures> = BTreeMap::new();
    for logged in events {
        let item = features.entry(&logged.event.item).or_default();
        item.interactions += 1;
        item.popularity
            .add(1.0, logged.event.time_ms, settings.popularity_half_life_ms);
    }
    let latest = events.iter().map(|e| e.event.time_ms).max().unwrap_or(0);
    let uncatalogued_items = features
        .keys()
        .filter(|id| !catalogue.contains_key(**id))
        .count();
    let mut cold_items = 0;
    for (id, metadata) in catalogue {
        let item = features.entry(id).or_insert_with(|| {
            cold_items += 1;
            ItemFeatures {
                popularity: Popularity {
                    score: prior,
                    at_ms: latest,
                },
                ..ItemFeatures::default()
            }
        });
        item.metadata = Some(metadata.clone());
    }
    let report = RefreshReport {
        items: features.len(),
        cold_items,
        uncatalogued_items,
        events: events.len(),
    };
    (
        features
            .into_iter()
            .map(|(id, f)| (id.clone(), f))
            .collect(),
        report,
    )
}

/// Writes refreshed item features in chunks.
pub async fn write_items<S: FeatureStore>(
    store: &S,
    items: &[(ItemId, ItemFeatures)],
) -> Result<(), StoreError> {
    for chunk in items.chunks(500) {
        store.put_items(chunk).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind};

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("writes");
        path
    }

    #[test]
    fn reads_every_catalogue_format() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dat = read_catalogue(&write(
            dir.path(),
            "movies.dat",
            b"1::Toy Story (1995)::Animation|Children's|Comedy\n2::Caf\xe9 (1999)::Drama\n",
        ))
        .expect("movies.dat");
        assert_eq!(dat["1"].genres, ["Animation", "Children's", "Comedy"]);
        assert_eq!(dat["2"].title, "Café (1999)");

        let item = read_catalogue(&write(
            dir.path(),
            "u.item",
            b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
        ))
        .expect("u.item");
        assert_eq!(item["1"].genres, ["Animation", "Children's", "Comedy"]);

        let atomic = read_catalogue(&write(
            dir.path(),
            "ml-1m.item",
            b"item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n1\tToy Story\t1995\tAnimation Comedy\n",
        ))
        .expect(".item");
        assert_eq!(atomic["1"].title, "Toy Story");
        assert_eq!(atomic["1"].genres, ["Animation", "Comedy"]);
        let class = read_catalogue(&write(
            dir.path(),
            "x.item",
            b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\tAnimation Comedy\n",
        ))
        .expect(".item with a class column");
        assert_eq!(
            class["1"],
            ItemMetadata {
                title: "Toy Story".into(),
                genres: vec!["Animation".into(), "Comedy".into()]
            }
        );

        let csv = read_catalogue(&write(
            dir.path(),
            "items.csv",
            b"item,title,genres\nsku-1,Red shoes,shoes|red\n",
        ))
        .expect("csv");
        assert_eq!(csv["sku-1"].genres, ["shoes", "red"]);

        let bad = read_catalogue(&write(dir.path(), "movies.dat", b"1::no genres\n"))
            .expect_err("bad line");
        assert!(bad.to_string().contains("movies.dat:1: expected"), "{bad}");
        let unknown =
            read_catalogue(&write(dir.path(), "items.json", b"{}")).expect_err("unknown format");
        assert!(
            unknown.to_string().contains("unknown catalogue format"),
            "{unknown}"
        );
    }

    #[test]
    fn refresh_gives_cold_items_the_prior_and_is_deterministic() {
        let catalogue = BTreeMap::from([
            (
                ItemId::parse("a").expect("an item id"),
                ItemMetadata {
                    title: "A".into(),
                    genres: vec![],
                },
            ),
            (
                ItemId::parse("new").expect("an item id"),
                ItemMetadata {
                    title: "New".into(),
                    genres: vec!["x".into()],
                },
            ),
        ]);
        let event = |item: &str, seq: u64, time_ms: i64| LoggedEvent {
            node: "n".into(),
            incarnation: String::new(),
            seq,
            event: Event::from_good_ids(&seq.to_string(), "u", item, EventKind::View, time_ms),
        };
        let events = [
            event("a", 1, 1000),
            event("a", 2, 2000),
            event("gone", 3, 3000),
        ];
        let settings = FeatureSettings::default();
        let (items, report) = item_features(&catalogue, &events, &settings, 0.5);
        assert_eq!(
            report,
            RefreshReport {
                items: 3,
                cold_items: 1,
                uncatalogued_items: 1,
                events: 3
            }
        );
        let new = &items
            .iter()
            .find(|(id, _)| id == "new")
            .expect("new item")
            .1;
        assert_eq!(
            new.popularity,
            Popularity {
                score: 0.5,
                at_ms: 3000
            }
        );
        assert_eq!(new.metadata.as_ref().map(|m| m.title.as_str()), Some("New"));
        let a = &items.iter().find(|(id, _)| id == "a").expect("a").1;
        assert_eq!(a.interactions, 2);
        assert_eq!(item_features(&catalogue, &events, &settings, 0.5).0, items);
    }
}
