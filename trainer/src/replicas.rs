//! Data parallelism inside one process: replicas of the training loop on threads, each running ONNX Runtime on
//! one core, joined by a [`Collective`] in memory. Measured on two cores, two single-threaded replicas train
//! more examples a second than one replica on both cores, as two MPI processes do (ONNX Runtime's intra-op
//! threads wait for each other inside every operator; replicas meet once a step), without an MPI launcher.
//!
//! Sums are taken in rank order whatever order the replicas arrive in, so a run is repeatable.

use std::any::Any;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::collective::Collective;

/// A group of `size` replicas in this process. Each thread takes its member with [`ReplicaGroup::member`].
#[derive(Debug)]
pub struct ReplicaGroup {
    size: usize,
    state: Mutex<GroupState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Replicas waiting at the current barrier.
    arrived: usize,
    /// Barriers passed so far: a waiting replica goes on once this moves past the one it arrived at.
    passed: u64,
    /// A replica stopped before the others: any replica that waits for it now unwinds instead.
    stopped: bool,
    /// Each replica's values during a sum or broadcast, by rank.
    f32s: Vec<Vec<f32>>,
    f64s: Vec<Vec<f64>>,
    bytes: Vec<u8>,
}

/// What a replica unwinds with when another replica of its group stopped with an error: the error that matters
/// is that one's.
#[derive(Debug, Clone, Copy)]
pub struct GroupStopped;

impl ReplicaGroup {
    pub fn new(size: usize) -> Self {
        assert!(size > 0, "a group has at least one replica");
        Self {
            size,
            state: Mutex::new(GroupState {
                f32s: vec![Vec::new(); size],
                f64s: vec![Vec::new(); size],
                ..GroupState::default()
            }),
            changed: Condvar::new(),
        }
    }

    pub fn member(&self, rank: usize) -> Replica<'_> {
        assert!(rank < self.size, "rank {rank} of a group of {}", self.size);
        Replica { group: self, rank }
    }

    /// Releases every replica waiting for one that will not come (it returned an error or panicked): they
    /// unwind with [`GroupStopped`].
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A replica that panicked while holding the lock left nothing half-written that a sum would read: the
        // group is stopped after any panic anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until every replica has arrived.
    fn pass(&self, state: MutexGuard<'_, GroupState>) {
        drop(self.wait(state));
    }

    /// Waits until every replica has arrived; returns the lock, held.
    fn wait<'a>(&'a self, mut state: MutexGuard<'a, GroupState>) -> MutexGuard<'a, GroupState> {
        let barrier = state.passed;
        state.arrived += 1;
        if state.arrived == self.size {
            state.arrived = 0;
            state.passed += 1;
            self.changed.notify_all();
            return state;
        }
        loop {
            // Checked before every wait, not only after a wake-up: a replica that arrives after the group stopped
            // would otherwise wait for a notification that never comes.
            if state.stopped {
                drop(state);
                // Not a panic: no message, and no hook; the thread's owner reports the replica that stopped.
                std::panic::resume_unwind(Box::new(GroupStopped));
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if state.passed != barrier {
                return state;
            }
        }
    }
}

/// One replica's place in its group.
#[derive(Debug, Clone, Copy)]
pub struct Replica<'a> {
    group: &'a ReplicaGroup,
    rank: usize,
}

impl Collective for Replica<'_> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.size
    }

    fn local_size(&self) -> usize {
        self.group.size
    }

    fn local_rank(&self) -> usize {
        self.rank
    }

    fn sum_f32(&self, values: &mut [f32]) {
        self.sum(values, |state| &mut state.f32s);
    }

    fn sum_f64(&self, values: &mut [f64]) {
        self.sum(values, |state| &mut state.f64s);
    }

    fn broadcast_f32(&self, values: &mut [f32]) {
        let mut state = self.group.lock();
        if self.rank == 0 {
            state.f32s[0].clear();
            state.f32s[0].extend_from_slice(values);
        }
        let state = self.group.wait(state);
        values.copy_from_slice(&state.f32s[0]);
        self.group.pass(state);
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        let mut state = self.group.lock();
        if self.rank == 0 {
            state.bytes.clone_from(bytes);
        }
        let state = self.group.wait(state);
        bytes.clone_from(&state.bytes);
        self.group.pass(state);
    }

    fn barrier(&self) {
        let state = self.group.lock();
        self.group.pass(state);
    }
}

impl Replica<'_> {
    /// Every replica puts its values in its slot; once all have, each adds the slots up in rank order, and none
    /// goes on (to overwrite its slot) until all have read.
    fn sum<T: Copy + std::ops::Add<Output = T>>(
        &self,
        values: &mut [T],
        slots: impl Fn(&mut GroupState) -> &mut Vec<Vec<T>>,
    ) {
        let mut state = self.group.lock();
        let mine = &mut slots(&mut state)[self.rank];
        mine.clear();
        mine.extend_from_slice(values);
        let mut state = self.group.wait(state);
        let all = slots(&mut state);
        for (i, value) in values.iter_mut().enumerate() {
            *value = all[1..].iter().fold(all[0][i], |sum, slot| sum + slot[i]);
        }
        self.group.pass(state);
    }
}

/// Runs `replica` on `size` threads, rank 0 on this one, each with its member of one group, and returns rank 0's
/// result. A replica that returns an error or panics stops the group; the first error (by rank) is returned, and
/// a panic other than [`GroupStopped`] is resumed here.
pub fn run_replicas<T: Send, E: Send>(
    size: usize,
    replica: impl Fn(&dyn Collective) -> Result<T, E> + Sync,
    lead: impl FnOnce(&dyn Collective) -> Result<T, E>,
) -> Result<T, E> {
    let group = ReplicaGroup::new(size);
    std::thread::scope(|scope| {
        let followers: Vec<_> = (1..size)
            .map(|rank| {
                let (group, replica) = (&group, &replica);
                std::thread::Builder::new()
                    .name(format!("replica-{rank}"))
                    .spawn_scoped(scope, move || stop_on_failure(group, rank, replica))
                    .expect("a replica thread starts")
            })
            .collect();
        let leader = stop_on_failure(&group, 0, lead);
        let outcomes = std::iter::once(leader).chain(
            followers
                .into_iter()
                .map(|f| f.join().expect("a replica's panic is caught")),
        );
        first_failure(outcomes.collect())
    })
}

/// Runs `work` as replica `rank`, and stops the group if it fails, so that no other replica waits for it.
fn stop_on_failure<T, E>(
    group: &ReplicaGroup,
    rank: usize,
    work: impl FnOnce(&dyn Collective) -> Result<T, E>,
) -> std::thread::Result<Result<T, E>> {
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&group.member(rank))));
    if !matches!(outcome, Ok(Ok(_))) {
        group.stop();
    }
    outcome
}

/// Rank 0's result unless a replica failed: the first error, else the first panic that is not [`GroupStopped`].
fn first_failure<T, E>(outcomes: Vec<std::thread::Result<Result<T, E>>>) -> Result<T, E> {
    let mut panic: Option<Box<dyn Any + Send>> = None;
    let mut error = None;
    let mut lead = None;
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(Ok(value)) if rank == 0 => lead = Some(value),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                error.get_or_insert(e);
            }
            Err(payload) if payload.is::<GroupStopped>() => {}
            Err(payload) => {
                panic.get_or_insert(payload);
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
    Ok(lead.expect("rank 0 returned a value when no replica failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_broadcasts_reach_every_replica() {
        let sums = run_replicas(
            3,
            |c| {
                let mut values = [c.rank() as f32 + 1.0, 10.0];
                c.sum_f32(&mut values);
                let mut wide = [0.1f64 * c.rank() as f64];
                c.sum_f64(&mut wide);
                let mut shared = [c.rank() as f32; 2];
                c.broadcast_f32(&mut shared);
                let mut bytes = vec![c.rank() as u8; c.rank() + 1];
                c.broadcast_bytes(&mut bytes);
                c.barrier();
                Ok::<_, ()>((values, wide, shared, bytes))
            },
            |c| {
                let mut values = [1.0f32, 10.0];
                c.sum_f32(&mut values);
                let mut wide = [0.0f64];
                c.sum_f64(&mut wide);
                let mut shared = [7.0f32, 8.0];
                c.broadcast_f32(&mut shared);
                let mut bytes = b"rank 0".to_vec();
                c.broadcast_bytes(&mut bytes);
                c.barrier();
                Ok((values, wide, shared, bytes))
            },
        )
        .expect("no replica fails");
        assert_eq!(sums.0, [6.0, 30.0]);
        assert_eq!(sums.1, [0.0 + 0.1 + 0.2]);
        assert_eq!(sums.2, [7.0, 8.0]);
        assert_eq!(sums.3, b"rank 0");
    }

    /// In f32, 1 + 1e8 rounds to 1e8: summed in rank order (1, 1e8, -1e8) the answer is 0, while the order of
    /// arrival here (rank 0 comes last) would give 1.
    #[test]
    fn sums_follow_rank_order_not_arrival_order() {
        let sum = run_replicas(
            3,
            |c| {
                let mut values = [if c.rank() == 1 { 1e8f32 } else { -1e8 }];
                c.sum_f32(&mut values);
                Ok::<_, ()>(values[0])
            },
            |c| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let mut values = [1.0f32];
                c.sum_f32(&mut values);
                Ok(values[0])
            },
        );
        assert_eq!(sum, Ok(0.0));
    }

    /// The followers' answers equal rank 0's: checked from inside, since only rank 0's result comes back.
    #[test]
    fn followers_see_what_rank_0_sent() {
        run_replicas(
            2,
            |c| {
                let mut shared = [0.0f32; 3];
                c.broadcast_f32(&mut shared);
                let mut bytes = Vec::new();
                c.broadcast_bytes(&mut bytes);
                if shared == [1.0, 2.0, 3.0] && bytes == b"plan" {
                    Ok(())
                } else {
                    Err(format!("rank {} saw {shared:?} {bytes:?}", c.rank()))
                }
            },
            |c| {
                c.broadcast_f32(&mut [1.0, 2.0, 3.0]);
                c.broadcast_bytes(&mut b"plan".to_vec());
                Ok(())
            },
        )
        .expect("every follower saw rank 0's values");
    }

    /// A replica that fails while the others wait for it in a sum releases them, and its error is the answer.
    #[test]
    fn a_failing_replica_stops_the_others_and_its_error_is_returned() {
        let outcome: Result<(), String> = run_replicas(
            3,
            |c| {
                if c.rank() == 2 {
                    return Err("replica 2 could not read its shard".to_string());
                }
                c.sum_f32(&mut [1.0]);
                Ok(())
            },
            |c| {
                c.sum_f32(&mut [1.0]);
                Ok(())
            },
        );
        assert_eq!(
            outcome,
            Err("replica 2 could not read its shard".to_string())
        );
    }

    /// The failing replica may stop the group before the others reach their next sum: they must not wait.
    #[test]
    fn a_replica_arriving_after_the_group_stopped_does_not_wait() {
        let group = ReplicaGroup::new(3);
        group.stop();
        for rank in [0, 1] {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                group.member(rank).sum_f32(&mut [1.0]);
            }));
            let payload = outcome.expect_err("unwinds instead of waiting");
            assert!(payload.is::<GroupStopped>(), "rank {rank}");
        }
    }

    #[test]
    fn a_panic_in_a_replica_reaches_the_caller() {
        let outcome = std::panic::catch_unwind(|| {
            run_replicas::<(), ()>(
                2,
                |_| panic!("replica bug"),
                |c| {
                    c.barrier();
                    Ok(())
                },
            )
        });
        let payload = outcome.expect_err("the panic is resumed");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"replica bug"));
    }
}
