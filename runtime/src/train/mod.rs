//! Training on the CPU: the loop, AdamW, the schedule, clipping, data, checkpoints, the loss plot
//! and sampling.
//!
//! One optimizer step of a [`Trainer`]:
//! ```text
//! lr ← schedule(step)
//! for each of `accumulate` micro-batches (the next `batch × seq` tokens of the Batcher):
//!     loss, grads ← objective(params, tokens, dropout seed)          summed in a fixed order
//! loss, grads ← sum / accumulate
//! clip grads to a global norm
//! stop with NonFinite if the loss or the gradient norm is not finite   (nothing applied)
//! AdamW step; step += 1
//! ```
//! The loop is the same on every device; where the parameters, gradients and moments live is its
//! [`Backend`]: the host ([`HostBackend`] around an [`Objective`]) or a device
//! ([`DeviceBackend`] around a [`DeviceModel`], e.g. the GPU trainer).
//! Everything a step reads is either in the [`checkpoint`] (params, moments, step, RNG state, data
//! cursor) or a pure function of it, so a run resumed from a checkpoint continues bit for bit.

mod backend;
pub mod checkpoint;
pub mod clip;
mod cpu;
pub mod data;
mod device;
mod error;
mod gpu;
pub mod heap;
/// AdamW ([`crate::ops::adamw`], the op folder with its CUDA kernel), under its older path.
pub use crate::ops::adamw as optim;
pub mod plot;
pub mod rng;
pub mod sample;
pub mod schedule;

use modelspec_dsl::ir::ModelSpec;

pub use self::backend::{Backend, HostBackend};
pub use self::checkpoint::{Checkpoint, TrainOptions, TrainState};
pub use self::cpu::CpuObjective;
use self::data::Batcher;
pub use self::device::{DeviceBackend, DeviceModel};
pub use self::error::TrainError;
pub use self::gpu::{GpuModel, GpuObjective};
use self::optim::AdamW;
use self::rng::SplitMix64;
use crate::Params;

/// What the training loop needs from a model: the mean next-token loss of a batch and its
/// gradient with respect to every parameter. The CPU executor implements it; tests use small
/// stand-ins.
pub trait Objective {
    /// The loss of `tokens` (`batch` rows, row-major) under `params` and the gradient of every
    /// parameter (same names and shapes). `seed` keys this micro-batch's dropout.
    fn loss_and_grads(
        &mut self,
        params: &Params,
        tokens: &[u32],
        batch: usize,
        seed: u64,
    ) -> Result<(f32, Params), TrainError>;

    /// The loss alone, for evaluation (no dropout). By default the gradient is computed and dropped.
    fn loss(&mut self, params: &Params, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.loss_and_grads(params, tokens, batch, 0)
            .map(|(loss, _)| loss)
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step just completed, counted from 0.
    pub step: u64,
    /// Its loss (mean over the micro-batches).
    pub loss: f32,
    /// Its learning rate.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens it processed.
    pub tokens: usize,
}

/// A training run in progress: the backend (parameters, gradients, optimizer), the data position
/// and the loss history.
pub struct Trainer<B> {
    /// Where the parameters, gradients and AdamW moments live, and how a step updates them.
    pub backend: B,
    /// Step, RNG, cursor, options, spec.
    pub state: TrainState,
    /// The loss of every completed step.
    pub losses: Vec<f32>,
    batcher: Batcher,
}

fn check_tokens(tokens: &[u32], spec: &ModelSpec) -> Result<(), TrainError> {
    if let Some((position, &token)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &t)| u64::from(t) >= spec.vocab)
    {
        return Err(TrainError::Config(format!(
            "the data has token id {token} (at token {position}) but the model's vocabulary is {}",
            spec.vocab
        )));
    }
    Ok(())
}

fn check_options(options: &TrainOptions, spec: &ModelSpec) -> Result<(), TrainError> {
    if options.batch == 0 || options.accumulate == 0 {
        return Err(TrainError::Config(
            "batch and accumulation must be at least 1".into(),
        ));
    }
    if options.seq < 2 {
        return Err(TrainError::Config(format!(
            "--seq {} is too short: a sequence needs 2 tokens",
            options.seq
        )));
    }
    if options.seq as u64 > spec.context {
        return Err(TrainError::Config(format!(
            "--seq {} exceeds the model's context of {} positions",
            options.seq, spec.context
        )));
    }
    Ok(())
}

impl<O: Objective> Trainer<HostBackend<O>> {
    /// A fresh run on the host from `params` on the token stream `tokens`.
    pub fn new(
        objective: O,
        spec: ModelSpec,
        params: Params,
        options: TrainOptions,
        tokens: Vec<u32>,
    ) -> Result<Self, TrainError> {
        Trainer::with_backend(HostBackend::new(objective), spec, params, options, tokens)
    }

    /// Continues the run saved in `checkpoint` on the host, on the same token stream.
    pub fn resume(
        objective: O,
        checkpoint: Checkpoint,
        tokens: Vec<u32>,
    ) -> Result<Self, TrainError> {
        Trainer::resume_with_backend(HostBackend::new(objective), checkpoint, tokens)
    }

    /// The parameters being trained.
    pub fn params(&self) -> &Params {
        &self.backend.params
    }

    /// AdamW with its moments.
    pub fn optimizer(&self) -> &AdamW {
        &self.backend.optimizer
    }
}

impl<B: Backend> Trainer<B> {
    /// A fresh run on `backend` from `params` on the token stream `tokens`.
    pub fn with_backend(
        mut backend: B,
        spec: ModelSpec,
        params: Params,
        options: TrainOptions,
        tokens: Vec<u32>,
    ) -> Result<Self, TrainError> {
        check_options(&options, &spec)?;
        check_tokens(&tokens, &spec)?;
        params
            .check(&spec)
            .map_err(|e| TrainError::Model(Box::new(e)))?;
        let batcher = Batcher::new(tokens, options.batch, options.seq, options.seed)?;
        backend.load(params, AdamW::new(options.adamw))?;
        let state = TrainState {
            step: 0,
            rng: SplitMix64::new(options.seed ^ 0x005E_ED0F_D20F_0017),
            cursor: batcher.cursor(),
            options,
            spec,
        };
        Ok(Self {
            backend,
            state,
            losses: Vec::new(),
            batcher,
        })
    }

    /// Continues the run saved in `checkpoint` on `backend`, on the same token stream.
    pub fn resume_with_backend(
        mut backend: B,
        checkpoint: Checkpoint,
        tokens: Vec<u32>,
    ) -> Result<Self, TrainError> {
        let Checkpoint {
            params,
            optimizer,
            state,
            losses,
        } = checkpoint;
        check_options(&state.options, &state.spec)?;
        check_tokens(&tokens, &state.spec)?;
        let batcher = Batcher::at(
            tokens,
            state.options.batch,
            state.options.seq,
            state.options.seed,
            state.cursor,
        )?;
        backend.load(params, optimizer)?;
        Ok(Self {
            backend,
            state,
            losses,
            batcher,
        })
    }

    /// Whether the run has taken all its steps.
    pub fn done(&self) -> bool {
        self.state.step >= self.state.options.steps
    }

    /// Takes one optimizer step. On a non-finite loss or gradient nothing changes except the data
    /// position (which no checkpoint records before the next successful step).
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let options = &self.state.options;
        let step = self.state.step;
        let lr = options.schedule.lr(step);
        let (batch, seq, accumulate) = (options.batch, options.seq, options.accumulate);

        let mut rng = self.state.rng;
        let mut loss_sum = 0.0f32;
        for i in 0..accumulate {
            let tokens = self.batcher.next_batch();
            let seed = rng.next_u64();
            loss_sum += self.backend.micro_batch(&tokens, batch, seed, i == 0)?;
        }
        let loss = loss_sum / accumulate as f32;
        let grad_norm = self.backend.finish_gradient(accumulate, options.clip)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                loss,
                grad_norm,
            });
        }
        self.backend.apply(lr)?;

        self.state.rng = rng;
        self.state.step += 1;
        self.state.cursor = self.batcher.cursor();
        self.losses.push(loss);
        Ok(StepReport {
            step,
            loss,
            lr,
            grad_norm,
            tokens: batch * seq * accumulate,
        })
    }

    /// Saves the run into `ckpt_dir` atomically (a device backend downloads its state first).
    pub fn save(&mut self, ckpt_dir: &std::path::Path) -> Result<(), TrainError> {
        let (params, optimizer) = self.backend.snapshot()?;
        checkpoint::save(ckpt_dir, &params, &optimizer, &self.state, &self.losses)
    }

    /// Mean loss over up to `max_windows` consecutive windows of `tokens` (`batch` at a time),
    /// without dropout; `None` when `tokens` holds no whole window.
    pub fn evaluate(
        &mut self,
        tokens: &[u32],
        max_windows: usize,
    ) -> Result<Option<f32>, TrainError> {
        let (batch, seq) = (self.state.options.batch, self.state.options.seq);
        let windows: Vec<&[u32]> = tokens.chunks_exact(seq).take(max_windows).collect();
        if windows.is_empty() {
            return Ok(None);
        }
        let (mut total, mut count) = (0.0f64, 0usize);
        for group in windows.chunks(batch) {
            let flat: Vec<u32> = group.concat();
            total += self.backend.loss(&flat, group.len())? as f64 * group.len() as f64;
            count += group.len();
        }
        Ok(Some((total / count as f64) as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::checkpoint::TrainOptions;
    use super::optim::AdamWConfig;
    use super::schedule::CosineSchedule;
    use super::*;
    use crate::Tensor;

    /// A one-layer spec small enough to hand-write.
    pub(crate) fn toy_spec() -> ModelSpec {
        let norm = r#"{"kind":"rms","eps":1e-5,"offset":0.0,"weight":true,"bias":false}"#;
        let json = format!(
            r#"{{"name":"toy","vocab":16,"vocab_padded":16,"vocab_pad_multiple":1,"d_model":4,"n_layers":1,
            "context":32,"dropout":{{"embedding":0.0,"attention":0.0,"residual":0.0}},
            "embedding":{{"tied":true,"scale":1.0,"scale_expr":"literal","learned_positions":false}},
            "final_norm":{norm},"logits":{{"softcap":null,"bias":false}},
            "weights":{{"naming":"llama","qkv":"separate","fused_gate_up":false}},
            "checkpoint":{{"budget":null}},
            "layers":[{{"index":0,
              "attention":{{"heads":2,"kv_heads":1,"head_dim":2,"qkv_bias":false,"out_bias":false,
                "qk_norm":null,"softcap":null,"scale":0.7071,"window":null}},
              "position":{{"kind":"none"}},
              "block":{{"norm":{norm},"placement":"pre","parallel_residual":false,"shared_norm":false}},
              "ffn":{{"kind":"mlp","activation":"gelu","hidden":8,"bias":true}},
              "checkpoint":{{"policy":"none"}}}}]}}"#
        );
        serde_json::from_str(&json).expect("toy spec")
    }

    /// Pulls every parameter towards a target that depends on the batch: loss = mean ½(p − y)².
    struct Quadratic {
        nan_at_call: Option<usize>,
        calls: usize,
    }

    impl Objective for Quadratic {
        fn loss_and_grads(
            &mut self,
            params: &Params,
            tokens: &[u32],
            _batch: usize,
            seed: u64,
        ) -> Result<(f32, Params), TrainError> {
            self.calls += 1;
            let y = tokens.iter().map(|&t| t as f32).sum::<f32>() / tokens.len() as f32 / 16.0
                + (seed % 7) as f32 * 1e-3;
            let n = params.numel() as f32;
            let mut loss = 0.0f32;
            let mut grads = Params::new();
            for (name, t) in params.iter() {
                let g: Vec<f32> = t.data().iter().map(|&p| (p - y) / n).collect();
                loss += t
                    .data()
                    .iter()
                    .map(|&p| 0.5 * (p - y) * (p - y))
                    .sum::<f32>()
                    / n;
                grads.insert(name.clone(), Tensor::from_vec(t.shape(), g).unwrap());
            }
            if self.nan_at_call == Some(self.calls) {
                loss = f32::NAN;
            }
            Ok((loss, grads))
        }
    }

    pub(crate) fn options(steps: u64) -> TrainOptions {
        TrainOptions {
            steps,
            batch: 2,
            seq: 8,
            accumulate: 2,
            schedule: CosineSchedule {
                peak_lr: 0.05,
                min_lr: 0.005,
                warmup_steps: 3,
                total_steps: steps,
            },
            adamw: AdamWConfig::default(),
            clip: 0.5,
            seed: 11,
            policy: None,
            tokenizer: "bytes".into(),
            data: "test".into(),
            data_hash: None,
            save_every: 100,
        }
    }

    pub(crate) fn tokens() -> Vec<u32> {
        (0..400u32).map(|i| (i * i + 3 * i) % 16).collect()
    }

    fn trainer(steps: u64, nan_at_call: Option<usize>) -> Trainer<HostBackend<Quadratic>> {
        let spec = toy_spec();
        let params = Params::init(&spec, 1);
        Trainer::new(
            Quadratic {
                nan_at_call,
                calls: 0,
            },
            spec,
            params,
            options(steps),
            tokens(),
        )
        .unwrap()
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("modelspec-train-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn loss_falls() {
        let mut t = trainer(40, None);
        while !t.done() {
            t.step().unwrap();
        }
        assert!(t.losses[39] < 0.5 * t.losses[0], "{:?}", t.losses);
        assert_eq!(t.optimizer().step, 40);
    }

    #[test]
    fn resume_continues_bit_for_bit() {
        let (n, k) = (12, 5);
        let mut straight = trainer(n, None);
        while !straight.done() {
            straight.step().unwrap();
        }

        let dir = temp_dir("resume");
        let mut first = trainer(n, None);
        for _ in 0..k {
            first.step().unwrap();
        }
        first.save(&dir).unwrap();
        drop(first);
        let ckpt = checkpoint::load(&dir).unwrap();
        assert_eq!(ckpt.state.step, k);
        let mut resumed = Trainer::resume(
            Quadratic {
                nan_at_call: None,
                calls: 0,
            },
            ckpt,
            tokens(),
        )
        .unwrap();
        while !resumed.done() {
            resumed.step().unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&straight.losses), bits(&resumed.losses));
        for (name, a) in straight.params().iter() {
            let b = resumed.params().get(name).unwrap();
            assert_eq!(bits(a.data()), bits(b.data()), "{name}");
        }
        assert_eq!(straight.optimizer(), resumed.optimizer());
        assert_eq!(straight.state, resumed.state);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_with_the_cpu_executor_and_dropout_is_bitwise() {
        // N steps straight == k steps, save, load, N - k steps: same losses, params and moments.
        let mut spec = toy_spec();
        spec.dropout.residual = 0.1;
        spec.dropout.attention = 0.1;
        let (n, k) = (8, 3);
        let make = |steps| {
            let params = Params::init(&spec, 4);
            let objective = CpuObjective::new(&spec, Some("full")).unwrap();
            Trainer::new(objective, spec.clone(), params, options(steps), tokens()).unwrap()
        };
        let mut straight = make(n);
        while !straight.done() {
            straight.step().unwrap();
        }
        let dir = temp_dir("cpu-resume");
        let mut first = make(n);
        for _ in 0..k {
            first.step().unwrap();
        }
        first.save(&dir).unwrap();
        drop(first);
        let ckpt = checkpoint::load(&dir).unwrap();
        let objective =
            CpuObjective::new(&ckpt.state.spec, ckpt.state.options.policy.as_deref()).unwrap();
        let mut resumed = Trainer::resume(objective, ckpt, tokens()).unwrap();
        while !resumed.done() {
            resumed.step().unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&straight.losses), bits(&resumed.losses));
        assert!(
            straight.losses[n as usize - 1] < straight.losses[0],
            "{:?}",
            straight.losses
        );
        assert_eq!(straight.params(), resumed.params());
        assert_eq!(straight.optimizer(), resumed.optimizer());
        // And the two runs write the same checkpoint file, byte for byte.
        let other = temp_dir("cpu-resume-straight");
        straight.save(&other).unwrap();
        resumed.save(&dir).unwrap();
        let file = |d: &std::path::Path| std::fs::read(d.join(checkpoint::FILE_NAME)).unwrap();
        assert!(file(&dir) == file(&other), "checkpoint bytes differ");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }

    #[test]
    fn bad_policy_is_a_clear_error() {
        let err = CpuObjective::new(&toy_spec(), Some("sometimes"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--checkpoint") && err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn checkpoint_keeps_every_float_of_the_state() {
        // Values whose shortest decimal form needs all 17 digits, through a save and a load.
        let mut t = trainer(3, None);
        t.state.spec.layers[0].attention.scale = 0.17677669529663687;
        t.state.options.schedule.min_lr = 0.00030000000000000003;
        t.state.options.clip = 0.1 + 0.2;
        let dir = temp_dir("floats");
        t.step().unwrap();
        t.save(&dir).unwrap();
        let loaded = checkpoint::load(&dir).unwrap();
        assert_eq!(loaded.state, t.state);
        assert_eq!(
            loaded.state.spec.layers[0].attention.scale.to_bits(),
            0.17677669529663687f64.to_bits()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_finite_loss_stops_and_names_the_step() {
        // Calls 1-2 are step 0, 3-4 step 1, 5-6 step 2: NaN in the second micro-batch of step 2.
        let mut t = trainer(10, Some(6));
        let dir = temp_dir("nan");
        t.step().unwrap();
        t.step().unwrap();
        t.save(&dir).unwrap();
        let before = t.params().clone();
        let err = t.step().unwrap_err();
        assert!(
            matches!(err, TrainError::NonFinite { step: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("step 2"), "{err}");
        assert_eq!(t.params(), &before, "nothing applied");
        assert_eq!(t.state.step, 2);
        assert_eq!(
            checkpoint::load(&dir).unwrap().state.step,
            2,
            "the good checkpoint is intact"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_and_truncated_checkpoints_are_errors() {
        let dir = temp_dir("corrupt");
        let mut t = trainer(4, None);
        t.step().unwrap();
        t.save(&dir).unwrap();
        let path = dir.join(checkpoint::FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();

        let mut flipped = bytes.clone();
        let last = flipped.len() - 9;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let err = checkpoint::load(&dir).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");

        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = checkpoint::load(&dir).unwrap_err().to_string();
        assert!(err.contains("corrupt or truncated"), "{err}");

        std::fs::write(&path, b"").unwrap();
        assert!(checkpoint::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            checkpoint::load(&dir).unwrap_err(),
            TrainError::Io { .. }
        ));
    }

    #[test]
    fn edited_training_state_is_a_checksum_error() {
        // Same-length edits of the JSON state (so the safetensors header still parses): the
        // checksum covers the state, not only the tensors.
        let dir = temp_dir("edited");
        let mut t = trainer(4, None);
        t.step().unwrap();
        t.save(&dir).unwrap();
        let path = dir.join(checkpoint::FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        let find = |needle: &[u8]| bytes.windows(needle.len()).position(|w| w == needle);
        for (from, to) in [
            ("\\\"peak_lr\\\":0.05", "\\\"peak_lr\\\":0.09"),
            ("\\\"seed\\\":11", "\\\"seed\\\":12"),
        ] {
            assert_eq!(from.len(), to.len());
            let start = find(from.as_bytes()).unwrap_or_else(|| panic!("{from} not in the header"));
            let mut out = bytes.clone();
            out[start..start + to.len()].copy_from_slice(to.as_bytes());
            std::fs::write(&path, &out).unwrap();
            let err = checkpoint::load(&dir).unwrap_err().to_string();
            assert!(err.contains("checksum mismatch"), "{from}: {err}");
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(checkpoint::load(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_data_and_options_are_errors() {
        let spec = toy_spec();
        let params = Params::init(&spec, 1);
        let q = || Quadratic {
            nan_at_call: None,
            calls: 0,
        };
        let mut bad = tokens();
        bad[100] = 16;
        let err = Trainer::new(q(), spec.clone(), params.clone(), options(3), bad)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("token id 16"), "{err}");
        let long = TrainOptions {
            seq: 33,
            ..options(3)
        };
        let err = Trainer::new(q(), spec, params, long, tokens())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("context"), "{err}");
    }
}
