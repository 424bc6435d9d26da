//! The set of runs an index looks ids up in, and the thread that merges small runs into larger ones so a look-up
//! asks few filters. Merging is size-tiered: four neighbouring runs of one size class become one of the next,
//! up to [`TOP_LEVEL`]; runs there are never merged again, so no merge reads more than a few million ids and
//! the memory a merge needs stays bounded.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::run::{Run, RunError, RunMeta};

/// Runs merged at once.
const FAN_IN: usize = 4;
/// Size classes: class `l` holds runs of `base · 4^l` ids up to the next class. Runs of this class stay as they
/// are (at most about 4 million ids each with the default flush size).
const TOP_LEVEL: u32 = 2;

/// The runs in the order of the log records they cover, shared by the writer (look-ups, new runs, expiry) and the
/// merge thread. `generation` changes whenever the list does, so the writer refreshes its snapshot only then.
#[derive(Debug, Default)]
pub struct RunSet {
    runs: Mutex<Vec<Arc<Run>>>,
    generation: AtomicU64,
}

impl RunSet {
    pub fn new(runs: Vec<Arc<Run>>) -> Self {
        Self {
            runs: Mutex::new(runs),
            generation: AtomicU64::new(1),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> (u64, Vec<Arc<Run>>) {
        let runs = self.lock();
        (self.generation(), runs.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Run>>> {
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to the list and publishes it.
    pub fn update<T>(&self, change: impl FnOnce(&mut Vec<Arc<Run>>) -> T) -> T {
        let mut runs = self.lock();
        let result = change(&mut runs);
        self.generation.fetch_add(1, Ordering::AcqRel);
        result
    }
}

fn level(ids: u64, base: u64) -> u32 {
    let mut level = 0;
    let mut bound = base.max(1) * FAN_IN as u64;
    while ids >= bound && level < TOP_LEVEL {
        level += 1;
        bound = bound.saturating_mul(FAN_IN as u64);
    }
    level
}

/// The first [`FAN_IN`] neighbouring runs of one class below the top, if any.
fn pick(runs: &[Arc<Run>], base: u64) -> Option<Vec<Arc<Run>>> {
    let levels: Vec<u32> = runs.iter().map(|r| level(r.count(), base)).collect();
    (0..runs.len().saturating_sub(FAN_IN - 1))
        .find(|&i| levels[i] < TOP_LEVEL && levels[i..i + FAN_IN].iter().all(|l| *l == levels[i]))
        .map(|i| runs[i..i + FAN_IN].to_vec())
}

/// Merges `inputs` (neighbours, in order) into one run, replaces them in `set` and deletes their files. Inputs
/// that expired meanwhile make the merge moot: its output is deleted and the set left as it is.
pub fn merge(dir: &Path, set: &RunSet, inputs: &[Arc<Run>]) -> Result<(), RunError> {
    let meta = RunMeta {
        first_seq: inputs[0].meta.first_seq,
        last_seq: inputs[inputs.len() - 1].meta.last_seq,
        max_time_ms: inputs.iter().map(|r| r.meta.max_time_ms).max().unwrap_or(0),
    };
    let mut streams: Vec<_> = inputs.iter().map(|r| r.keys().peekable()).collect();
    let merged = std::iter::from_fn(|| {
        // The smallest head among the inputs; an error is passed on as it is.
        let mut best: Option<(usize, u128)> = None;
        for (i, stream) in streams.iter_mut().enumerate() {
            match stream.peek() {
                Some(Ok(key)) if best.is_none_or(|(_, b)| *key < b) => best = Some((i, *key)),
                Some(Err(_)) => return stream.next(),
                _ => {}
            }
        }
        best.and_then(|(i, _)| streams[i].next())
    });
    let Some(output) = Run::write(dir, meta, merged)? else {
        return Ok(());
    };
    let output = Arc::new(output);
    let replaced = set.update(|runs| {
        let Some(at) = runs.iter().position(|r| Arc::ptr_eq(r, &inputs[0])) else {
            return false;
        };
        let present = runs.len() >= at + inputs.len()
            && runs[at..at + inputs.len()]
                .iter()
                .zip(inputs)
                .all(|(r, i)| Arc::ptr_eq(r, i));
        if present {
            runs.splice(at..at + inputs.len(), [output.clone()]);
        }
        present
    });
    let obsolete: Vec<&PathBuf> = if replaced {
        inputs.iter().map(|r| &r.path).collect()
    } else {
        vec![&output.path]
    };
    for path in obsolete {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The merge thread: woken after each flush, merges while there is something to merge; stops when dropped.
#[derive(Debug)]
pub struct Merger {
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Merger {
    /// `base` is the flush size: the size of the smallest class.
    pub fn start(dir: PathBuf, set: Arc<RunSet>, base: u64) -> Self {
        let (wake, woken) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("edgerec-ids-merge".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    while woken.try_recv().is_ok() {}
                    loop {
                        let (_, runs) = set.snapshot();
                        let Some(inputs) = pick(&runs, base) else {
                            break;
                        };
                        drop(runs);
                        if let Err(e) = merge(&dir, &set, &inputs) {
                            // Nothing is lost: the inputs stay; the next flush tries again.
                            eprintln!("merging runs of the deduplication index: {e}");
                            break;
                        }
                    }
                }
            })
            .expect("spawning the merge thread");
        Self {
            wake: Some(wake),
            thread: Some(thread),
        }
    }

    pub fn wake(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.send(());
        }
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_go_up_by_four_and_stop_at_the_top() {
        assert_eq!(level(1, 100), 0);
        assert_eq!(level(399, 100), 0);
        assert_eq!(level(400, 100), 1);
        assert_eq!(level(1_599, 100), 1);
        assert_eq!(level(1_600, 100), 2);
        assert_eq!(level(u64::MAX, 100), TOP_LEVEL);
    }
}
