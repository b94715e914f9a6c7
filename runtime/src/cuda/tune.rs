//! Choices made by timing, once per machine: which of a library's candidate implementations a
//! fixed-shape call runs (cuBLASLt's algorithms and the own GEMM kernels in
//! [`ops::matmul`](crate::ops::matmul), cuDNN's attention engine configs in
//! [`cudnn`](crate::cuda::cudnn)).
//!
//! Two candidates round differently, so a choice made by timing must not differ between two
//! processes of one machine (a resumed run must compute the bits an unbroken one does). Every
//! choice is therefore written to a file in the kernel cache ([`compile::cache_dir`]), keyed by
//! what the timings depend on (the GPU, the library's version, the shape), and read back before
//! anything is timed: the first process on a machine times, every later one reads. Where no
//! cache directory can be written, nothing is timed and the library's first pick runs.
//!
//! [`compile::cache_dir`]: crate::cuda::compile::cache_dir

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Runs timed per candidate, after one untimed warm-up run.
pub(crate) const REPS: usize = 5;

/// The persisted choices of one file, and what this process timed (for benchmarks' reports).
pub(crate) struct Tuner {
    /// The choices file; `None`: no choice is persisted, so none is made.
    path: Option<PathBuf>,
    /// Choices by key (an index into the candidates' order).
    chosen: BTreeMap<String, usize>,
    /// This process's timings.
    timed: Vec<Tuned>,
}

/// One choice this process made by timing.
#[derive(Debug, Clone)]
pub struct Tuned {
    /// What was chosen for (library, shape, ...), as in the choices file.
    pub key: String,
    /// Candidates timed.
    pub candidates: usize,
    /// The index taken (0: the library's first pick).
    pub chosen: usize,
    /// Milliseconds a run of the first pick.
    pub first_ms: f32,
    /// Milliseconds a run of the one taken.
    pub best_ms: f32,
}

impl Tuner {
    /// The tuner that the switch `var` and the kernel cache allow, and whether `var` says `wide`
    /// (a search over more candidates than the library lists; on). Off when `var` says off
    /// (`off`, `0`, `false`) or no cache directory can be made; else reading and appending
    /// `<cache>/<file>`.
    pub(crate) fn from_env(var: &str, file: &str) -> (Tuner, bool) {
        if std::env::var(var).as_deref() == Ok("wide") {
            return (Tuner::in_cache(file), true);
        }
        if crate::cuda::env_switch(var) == Some(false) {
            return (Tuner::at(None), false);
        }
        (Tuner::in_cache(file), false)
    }

    /// The tuner of `<cache>/<file>`, off where no cache directory can be made.
    pub(crate) fn in_cache(file: &str) -> Tuner {
        let path = crate::cuda::compile::cache_dir()
            .filter(|d| std::fs::create_dir_all(d).is_ok())
            .map(|d| d.join(file));
        Tuner::at(path)
    }

    /// A tuner over the choices file `path` (`None`: none made).
    pub(crate) fn at(path: Option<PathBuf>) -> Tuner {
        let chosen = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| parse(&text))
            .unwrap_or_default();
        Tuner {
            path,
            chosen,
            timed: Vec::new(),
        }
    }

    /// Whether choices are made at all.
    pub(crate) fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// The persisted choice for `key`, the file read again on a miss (another handle or
    /// process may have timed it since).
    pub(crate) fn lookup(&mut self, key: &str) -> Option<usize> {
        if !self.chosen.contains_key(key)
            && let Some(text) = self
                .path
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
        {
            for (k, i) in parse(&text) {
                self.chosen.entry(k).or_insert(i);
            }
        }
        self.chosen.get(key).copied()
    }

    /// Records a choice made by timing: kept for this process and appended to the file. A
    /// choice that cannot be written is not used (the first pick is returned), so that a later
    /// process cannot choose differently.
    pub(crate) fn record(&mut self, t: Tuned) -> usize {
        let line = format!(
            "{}\t{}\t{:.5}\t{:.5}\n",
            t.key, t.chosen, t.best_ms, t.first_ms
        );
        let written = self.path.as_ref().is_some_and(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .is_ok()
        });
        let chosen = if written { t.chosen } else { 0 };
        self.chosen.insert(t.key.clone(), chosen);
        self.timed.push(t);
        chosen
    }

    /// What the tuner behind `lock` timed in this process (a poisoned lock is read as it is).
    pub(crate) fn timed_in(lock: &std::sync::Mutex<Tuner>) -> Vec<Tuned> {
        lock.lock().unwrap_or_else(|e| e.into_inner()).timed.clone()
    }
}

/// The choices of a file's lines `key \t index \t ...`; the first line for a key wins (two
/// processes racing to time one call both append; every later process takes the first).
fn parse(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut cols = line.split('\t');
        if let (Some(key), Some(Ok(i))) = (cols.next(), cols.next().map(str::parse::<usize>)) {
            out.entry(key.to_string()).or_insert(i);
        }
    }
    out
}

/// Times `time(j, REPS)` for each candidate `j < count` and returns `(index of the fastest, its
/// ms, candidate 0's ms)`. A candidate that fails to run is skipped; `None` if candidate 0 itself
/// fails (the caller keeps it and reports its error on the real run). Ties keep the earlier.
pub(crate) fn fastest(
    count: usize,
    mut time: impl FnMut(usize, usize) -> Option<f32>,
) -> Option<(usize, f32, f32)> {
    let first = time(0, REPS)?;
    let mut best = (0, first);
    for j in 1..count {
        if let Some(ms) = time(j, REPS)
            && ms < best.1
        {
            best = (j, ms);
        }
    }
    Some((best.0, best.1, first))
}

/// One timed run of `runs` launches, in milliseconds a launch, after an untimed warm-up.
pub(crate) fn per_run<E>(
    gpu: &crate::cuda::gpu::Gpu,
    runs: usize,
    mut launch: impl FnMut() -> Result<(), E>,
) -> Option<f32> {
    launch().ok()?;
    let mut failed = false;
    let ms = gpu
        .time_ms(|| {
            for _ in 0..runs {
                if launch().is_err() {
                    failed = true;
                    break;
                }
            }
            Ok(())
        })
        .ok()?;
    (!failed).then_some(ms / runs as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_the_first_choice_of_a_key_and_skips_bad_lines() {
        let text = "a\t3\t0.1\t0.2\nb\tx\nc\nA\t1\na\t5\t0.1\t0.1\n";
        let m = parse(text);
        assert_eq!(m.get("a"), Some(&3));
        assert_eq!(m.get("A"), Some(&1));
        assert_eq!(m.get("b"), None);
        assert_eq!(m.get("c"), None);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn fastest_takes_the_quickest_candidate_and_skips_failures() {
        let times = [Some(2.0), None, Some(1.5), Some(1.7)];
        assert_eq!(fastest(4, |j, _| times[j]), Some((2, 1.5, 2.0)));
        // A tie keeps the earlier (the library's order).
        let ties = [Some(1.0), Some(1.0)];
        assert_eq!(fastest(2, |j, _| ties[j]), Some((0, 1.0, 1.0)));
        // Candidate 0 failing: no choice.
        assert_eq!(fastest(2, |j, _| [None, Some(1.0)][j]), None);
    }

    fn tuned(key: &str, chosen: usize) -> Tuned {
        Tuned {
            key: key.into(),
            candidates: 8,
            chosen,
            first_ms: 1.0,
            best_ms: 0.9,
        }
    }

    #[test]
    fn a_choice_that_cannot_be_written_is_not_used() {
        let mut t = Tuner::at(Some(PathBuf::from(
            "/nonexistent-dir-modelspec/gemm-algos.tsv",
        )));
        assert_eq!(t.record(tuned("k", 2)), 0);
        assert_eq!(t.lookup("k"), Some(0));
    }

    #[test]
    fn choices_round_trip_through_the_file() {
        let dir = std::env::temp_dir().join(format!("modelspec-tune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("choices.tsv");
        let _ = std::fs::remove_file(&path);
        let mut t = Tuner::at(Some(path.clone()));
        for (key, chosen) in [("x|1", 3), ("y|2", 0)] {
            assert_eq!(t.record(tuned(key, chosen)), chosen);
        }
        let back = parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(back.get("x|1"), Some(&3));
        assert_eq!(back.get("y|2"), Some(&0));
        // A second handle that loaded the file before those choices finds them on a miss.
        let mut late = Tuner::at(Some(path.clone()));
        assert_eq!(late.lookup("x|1"), Some(3));
        assert_eq!(late.lookup("z"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
