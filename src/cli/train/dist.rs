//! Data-parallel flags of `modelspec train`: `--ranks N` (CPU threads), `--gpus N` and the
//! multi-host rendezvous flags (GPU, NCCL), and what each device accepts.

use std::time::Instant;

use anyhow::{Result, bail};
use modelspec_runtime::cuda::Dtype;
use modelspec_runtime::dist::gpu::{GpuDataParallel, GpuRank, GpuRunResult};
use modelspec_runtime::dist::rendezvous::{self, RendezvousConfig, RendezvousFlags};
use modelspec_runtime::dist::{DEFAULT_BUCKET_BYTES, NcclComm, Sharding};
use modelspec_runtime::train::StepReport;
use modelspec_runtime::train::checkpoint;
use modelspec_runtime::train::data;

use super::TrainArgs;

/// Data-parallel options of `modelspec train`.
#[derive(Debug, Clone, clap::Args)]
pub struct DistArgs {
    /// CPU data parallelism: N ranks as threads, each taking batch/N sequences of every
    /// micro-batch; gradients are averaged by an in-process all-reduce (same curve as one rank).
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// GPU data parallelism: one rank per GPU, gradients all-reduced over NCCL (--device cuda).
    #[arg(long)]
    pub gpus: Option<usize>,
    /// Multi-host GPU runs: ranks over all hosts (else WORLD_SIZE).
    #[arg(long)]
    pub world_size: Option<usize>,
    /// Multi-host GPU runs: this process's rank (else RANK).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Multi-host GPU runs: rank 0's host (else MASTER_ADDR).
    #[arg(long)]
    pub master_addr: Option<String>,
    /// Multi-host GPU runs: rank 0's port (else MASTER_PORT, default 29500).
    #[arg(long)]
    pub master_port: Option<u16>,
}

impl DistArgs {
    /// Whether these flags ask for a data-parallel run on GPUs (`--device cuda` with `--gpus` or
    /// the multi-host flags), which [`run_gpus`] runs.
    pub fn gpu_run(&self, device: &str) -> bool {
        device == "cuda" && (self.gpus.is_some() || self.multi_host())
    }

    fn multi_host(&self) -> bool {
        self.world_size.is_some()
            || self.rank.is_some()
            || self.master_addr.is_some()
            || self.master_port.is_some()
    }

    /// The number of CPU thread ranks to train with on `device` with micro-batches of `batch`
    /// sequences, or why the flags cannot run there.
    pub fn cpu_ranks(&self, device: &str, batch: usize) -> Result<usize> {
        if device == "cpu" {
            if let Some(n) = self.gpus {
                bail!(
                    "--gpus {n} needs --device cuda (one rank per GPU over NCCL); for data parallelism on the CPU use --ranks {n} ({n} threads sharing each batch)"
                );
            }
            if self.multi_host() {
                bail!(
                    "--world-size/--rank/--master-addr/--master-port start a multi-host NCCL run and need --device cuda; on the CPU use --ranks N (threads of one process)"
                );
            }
            if self.ranks == 0 {
                bail!("--ranks must be at least 1");
            }
            if batch < self.ranks {
                bail!(
                    "--batch {batch} cannot be split over --ranks {}: every rank needs at least one sequence",
                    self.ranks
                );
            }
            return Ok(self.ranks);
        }
        if self.ranks != 1 {
            bail!(
                "--ranks is data parallelism over CPU threads; on GPUs use --gpus N (--device cuda)"
            );
        }
        Ok(1)
    }
}

/// `modelspec train --device cuda --gpus N` (one process, N GPUs as threads) or, with
/// `--world-size/--rank/--master-addr/--master-port` (or their environment variables), one rank
/// per process across hosts. Forward and backward run on the GPUs; gradients are all-reduced over
/// NCCL; clipping and AdamW run on the host (see `modelspec_runtime::dist::gpu`). Writes the final
/// checkpoint into DIR/ckpt like the CPU trainer, so `sample` and `train --resume` read it.
pub fn run_gpus(args: &TrainArgs) -> Result<()> {
    if args.resume.is_some() {
        bail!("--resume is not supported with --gpus yet: resume on the CPU, or start a new run");
    }
    if args.dist.ranks != 1 {
        bail!("--ranks is data parallelism over CPU threads; on GPUs use --gpus N");
    }
    // The options, the initial parameters and the tokens exactly as a CPU run would have them.
    let (trainer, out_dir, tokenizer) = super::start(args)?;
    let options = trainer.state.options.clone();
    let spec = trainer.state.spec.clone();
    let params = trainer.backend.params;
    let text = super::read_text(&options.data)?;
    let all_tokens = tokenizer.encode(&text)?;
    let (tokens, _) = data::split_validation(&all_tokens, 0.05, 0);
    let run = GpuDataParallel {
        spec: &spec,
        options: &options,
        dtype: Dtype::F32,
        bucket_bytes: DEFAULT_BUCKET_BYTES,
        sharding: Sharding::None,
    };
    let started = Instant::now();
    let on_step = |r: &StepReport| {
        eprintln!(
            "step {:>5}/{} loss {:.4} | lr {:.2e} | |g| {:.2} | {:.0} tok/s",
            r.step + 1,
            options.steps,
            r.loss,
            r.lr,
            r.grad_norm,
            (r.tokens as f64 * (r.step + 1) as f64) / started.elapsed().as_secs_f64().max(1e-9)
        );
    };
    let env_world = std::env::var("WORLD_SIZE").is_ok();
    let (result, rank0): (GpuRunResult, bool) = if args.dist.multi_host() || env_world {
        let d = &args.dist;
        if d.gpus.is_some_and(|g| g != 1) {
            bail!(
                "a multi-host run has one process per GPU: start one process per rank without --gpus (or --gpus 1)"
            );
        }
        let flags = RendezvousFlags {
            rank: d.rank,
            world_size: d.world_size,
            master_addr: d.master_addr.clone(),
            master_port: d.master_port,
            local_rank: None,
        };
        let cfg = RendezvousConfig::resolve(&flags, |k| std::env::var(k).ok())?;
        let own = if cfg.rank == 0 {
            Some(NcclComm::unique_id()?)
        } else {
            None
        };
        let id = rendezvous::exchange_id(&cfg, own)?;
        let at = GpuRank {
            rank: cfg.rank,
            world_size: cfg.world_size,
            ordinal: cfg.local_rank,
            id,
        };
        eprintln!(
            "rank {} of {} on GPU {} (rank 0 at {}:{})",
            at.rank, at.world_size, at.ordinal, cfg.master_addr, cfg.master_port
        );
        (run.run_rank(at, params, tokens, &on_step)?, cfg.rank == 0)
    } else {
        let gpus = args.dist.gpus.unwrap_or(1);
        eprintln!(
            "training {} on {gpus} GPU(s): global batch {}x{}, {} steps",
            spec.name, options.batch, options.seq, options.steps
        );
        (run.run_local(gpus, params, tokens, &on_step)?, true)
    };
    let elapsed = started.elapsed().as_secs_f64();
    if rank0 {
        if let Some(optimizer) = &result.optimizer {
            let ckpt_dir = out_dir.join("ckpt");
            checkpoint::save(
                &ckpt_dir,
                &result.params,
                optimizer,
                &result.state,
                &result.losses,
            )?;
            println!("checkpoint: {}", ckpt_dir.display());
        }
        let tail = &result.losses[result.losses.len().saturating_sub(20)..];
        let mean = tail.iter().map(|&l| l as f64).sum::<f64>() / tail.len().max(1) as f64;
        println!(
            "trained {} steps in {elapsed:.1} s ({:.0} tokens/s); final training loss (mean of the last {}): {mean:.4}",
            result.losses.len(),
            (result.losses.len() * options.batch * options.seq) as f64 / elapsed.max(1e-9),
            tail.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ranks: usize, gpus: Option<usize>) -> DistArgs {
        DistArgs {
            ranks,
            gpus,
            world_size: None,
            rank: None,
            master_addr: None,
            master_port: None,
        }
    }

    #[test]
    fn each_device_takes_its_own_flag() {
        assert_eq!(args(4, None).cpu_ranks("cpu", 8).unwrap(), 4);
        let e = args(1, Some(2))
            .cpu_ranks("cpu", 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ranks 2"), "{e}");
        let e = args(4, None).cpu_ranks("cuda", 8).unwrap_err().to_string();
        assert!(e.contains("--gpus"), "{e}");
        assert!(args(1, Some(2)).gpu_run("cuda"));
        assert!(!args(1, Some(2)).gpu_run("cpu"));
        assert!(!args(1, None).gpu_run("cuda"));
        let e = args(16, None).cpu_ranks("cpu", 8).unwrap_err().to_string();
        assert!(e.contains("--batch 8"), "{e}");
        let mut multi = args(1, None);
        multi.world_size = Some(2);
        assert!(multi.cpu_ranks("cpu", 8).is_err());
    }
}
