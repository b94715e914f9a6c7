//! [`LocalComm`]: ranks as threads of one process, exchanging buffers through shared memory.
//!
//! Each collective is one exchange: every rank deposits its contribution, the last to arrive
//! publishes the whole set (in rank order) and wakes the others, and every rank computes its result
//! from that set itself. Sums always run over ranks 0, 1, …, N−1 in that order, so every rank gets
//! the same bits, whatever order the threads arrived in, and a reduce-scatter gives exactly the
//! slice of the corresponding all-reduce.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Communicator, DistError};

/// What a collective deposited: its kind and data.
type Contribution = (&'static str, Arc<Vec<f32>>);

struct State {
    slots: Vec<Option<Contribution>>,
    arrived: usize,
    generation: u64,
    published: Arc<Vec<Contribution>>,
    left: bool,
}

struct Shared {
    world_size: usize,
    timeout: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

/// One rank of an in-process communicator. Create all ranks together with [`LocalComm::group`]
/// and move each into its own thread.
///
/// ```
/// use modelspec_runtime::dist::{Communicator, LocalComm};
/// let comms = LocalComm::group(2);
/// let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
///     let handles: Vec<_> = comms
///         .into_iter()
///         .map(|mut c| s.spawn(move || {
///             let mut buf = vec![c.rank() as f32 + 1.0; 3];
///             c.all_reduce_sum(&mut buf).unwrap();
///             buf
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert_eq!(sums, vec![vec![3.0; 3], vec![3.0; 3]]);
/// ```
pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalComm")
            .field("rank", &self.rank)
            .field("world_size", &self.shared.world_size)
            .finish()
    }
}

impl LocalComm {
    /// `world_size` connected ranks (index = rank), each waiting at most 10 minutes for the others.
    pub fn group(world_size: usize) -> Vec<LocalComm> {
        Self::group_with_timeout(world_size, Duration::from_secs(600))
    }

    /// As [`LocalComm::group`], with a timeout for each collective.
    pub fn group_with_timeout(world_size: usize, timeout: Duration) -> Vec<LocalComm> {
        let world_size = world_size.max(1);
        let shared = Arc::new(Shared {
            world_size,
            timeout,
            state: Mutex::new(State {
                slots: (0..world_size).map(|_| None).collect(),
                arrived: 0,
                generation: 0,
                published: Arc::new(Vec::new()),
                left: false,
            }),
            wake: Condvar::new(),
        });
        (0..world_size)
            .map(|rank| LocalComm {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deposits `data` and returns every rank's contribution in rank order, checking that all
    /// ranks called the same collective with the same length.
    fn exchange(
        &self,
        op: &'static str,
        data: Vec<f32>,
    ) -> Result<Arc<Vec<Contribution>>, DistError> {
        let n = self.shared.world_size;
        let mut state = self.lock();
        if state.left {
            return Err(DistError::PeerGone {
                rank: self.rank,
                op,
            });
        }
        state.slots[self.rank] = Some((op, Arc::new(data)));
        state.arrived += 1;
        let all = if state.arrived == n {
            let set: Vec<Contribution> = state
                .slots
                .iter_mut()
                .map(|s| s.take().expect("every rank deposited"))
                .collect();
            state.published = Arc::new(set);
            state.arrived = 0;
            state.generation += 1;
            self.shared.wake.notify_all();
            Arc::clone(&state.published)
        } else {
            let generation = state.generation;
            let deadline = Instant::now() + self.shared.timeout;
            loop {
                // A completed round is read even if a peer left right after completing it.
                if state.generation != generation {
                    break Arc::clone(&state.published);
                }
                if state.left {
                    return Err(DistError::PeerGone {
                        rank: self.rank,
                        op,
                    });
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(DistError::Timeout {
                        rank: self.rank,
                        op,
                        seconds: self.shared.timeout.as_secs(),
                    });
                }
                state = self
                    .shared
                    .wake
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
        };
        drop(state);
        let (op0, first) = &all[0];
        for (rank, (op_r, data)) in all.iter().enumerate() {
            if op_r != op0 || data.len() != first.len() {
                return Err(DistError::Mismatch {
                    op,
                    rank,
                    len: data.len(),
                    expected: first.len(),
                });
            }
        }
        Ok(all)
    }
}

impl Drop for LocalComm {
    /// A rank that leaves (returns early with an error, panics) wakes the others with
    /// [`DistError::PeerGone`] instead of leaving them waiting.
    fn drop(&mut self) {
        let mut state = self.lock();
        state.left = true;
        self.shared.wake.notify_all();
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        if self.shared.world_size == 1 {
            return Ok(());
        }
        let all = self.exchange("all_reduce", buf.to_vec())?;
        buf.copy_from_slice(&all[0].1);
        for (_, data) in &all[1..] {
            for (a, b) in buf.iter_mut().zip(data.iter()) {
                *a += *b;
            }
        }
        Ok(())
    }

    fn reduce_scatter_sum(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DistError> {
        let n = self.shared.world_size;
        let chunk = output.len();
        DistError::check_chunks("reduce_scatter", "input", input.len(), chunk, n)?;
        let range = self.rank * chunk..(self.rank + 1) * chunk;
        if n == 1 {
            output.copy_from_slice(input);
            return Ok(());
        }
        let all = self.exchange("reduce_scatter", input.to_vec())?;
        output.copy_from_slice(&all[0].1[range.clone()]);
        for (_, data) in &all[1..] {
            for (a, b) in output.iter_mut().zip(&data[range.clone()]) {
                *a += *b;
            }
        }
        Ok(())
    }

    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DistError> {
        let n = self.shared.world_size;
        DistError::check_chunks("all_gather", "output", output.len(), input.len(), n)?;
        if n == 1 {
            output.copy_from_slice(input);
            return Ok(());
        }
        let all = self.exchange("all_gather", input.to_vec())?;
        for (out, (_, data)) in output.chunks_exact_mut(input.len().max(1)).zip(all.iter()) {
            out.copy_from_slice(data);
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), DistError> {
        if self.shared.world_size == 1 {
            return Ok(());
        }
        self.exchange("barrier", Vec::new()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks<T: Send>(
        n: usize,
        f: impl Fn(&mut LocalComm) -> Result<T, DistError> + Sync,
    ) -> Vec<Result<T, DistError>> {
        let comms = LocalComm::group_with_timeout(n, Duration::from_secs(20));
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = comms
                .into_iter()
                .map(|mut c| s.spawn(move || f(&mut c)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn collectives_agree_with_a_serial_reference() {
        for n in [1usize, 2, 3, 4] {
            let out = on_ranks(n, |c| {
                let r = c.rank() as f32;
                let mut sum: Vec<f32> = (0..8).map(|i| 0.1 * i as f32 + r).collect();
                c.all_reduce_sum(&mut sum)?;
                let input: Vec<f32> = (0..2 * c.world_size())
                    .map(|i| i as f32 * (r + 1.0))
                    .collect();
                let mut part = vec![0.0; 2];
                c.reduce_scatter_sum(&input, &mut part)?;
                let mut gathered = vec![0.0; 3 * c.world_size()];
                c.all_gather(&[r, r, r], &mut gathered)?;
                c.barrier()?;
                Ok((sum, part, gathered))
            });
            for (rank, result) in out.into_iter().enumerate() {
                let (sum, part, gathered) = result.unwrap();
                for (i, x) in sum.iter().enumerate() {
                    let mut expected = 0.1 * i as f32;
                    for r in 1..n {
                        expected += 0.1 * i as f32 + r as f32;
                    }
                    assert_eq!(*x, expected, "n {n} rank {rank}");
                }
                let scale: f32 = (1..=n).map(|r| r as f32).sum();
                assert_eq!(
                    part,
                    vec![(2 * rank) as f32 * scale, (2 * rank + 1) as f32 * scale]
                );
                let expected: Vec<f32> = (0..n).flat_map(|r| [r as f32; 3]).collect();
                assert_eq!(gathered, expected);
            }
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error_on_every_rank() {
        let out = on_ranks(2, |c| {
            let mut buf = vec![1.0; 2 + c.rank()];
            c.all_reduce_sum(&mut buf)
        });
        for r in out {
            assert!(matches!(r, Err(DistError::Mismatch { .. })), "{r:?}");
        }
    }

    #[test]
    fn a_rank_that_leaves_releases_the_others() {
        let out = on_ranks(3, |c| {
            if c.rank() == 2 {
                return Ok(());
            }
            c.barrier()
        });
        // Rank 2's communicator is dropped when its closure returns; the others must not hang.
        assert!(out[2].is_ok());
        for r in &out[..2] {
            assert!(matches!(r, Err(DistError::PeerGone { .. })), "{r:?}");
        }
    }
}
