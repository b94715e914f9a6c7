//! Data-parallel flags of `modelspec train`: `--ranks N` (CPU threads), `--gpus N` and the
//! multi-host rendezvous flags (GPU, NCCL), and what each device accepts.

use anyhow::{Result, bail};

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
        if self.gpus.is_some() || self.multi_host() {
            bail!(
                "--device {device} --gpus: data-parallel GPU training is not wired into `train` yet. \
                 modelspec_runtime::dist has the NCCL communicator (one rank per GPU, a one-rank \
                 world on one GPU), gradient buckets, ZeRO-1 and the multi-host rendezvous, but the \
                 GPU trainer (runtime/src/cuda/train.rs) runs backward and AdamW as one call; data \
                 parallelism needs from it: a step that stops after backward, mutable access to its \
                 flat f32 gradient arena (with each parameter's offset) for in-place bucket \
                 all-reduces, an optimizer-only step, and an event per layer to overlap the buckets \
                 with backward. On the CPU: --device cpu --ranks N"
            );
        }
        Ok(1)
    }
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
        let e = args(1, Some(2))
            .cpu_ranks("cuda", 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gradient arena"), "{e}");
        let e = args(16, None).cpu_ranks("cpu", 8).unwrap_err().to_string();
        assert!(e.contains("--batch 8"), "{e}");
        let mut multi = args(1, None);
        multi.world_size = Some(2);
        assert!(multi.cpu_ranks("cpu", 8).is_err());
    }
}
