//! Data parallelism: N ranks follow the one-rank loss curve, ZeRO-1 equals unsharded AdamW, the
//! rendezvous hands every rank the same id, and (on a machine with a GPU and libnccl) the NCCL
//! communicator runs the same step. GPU parts skip with a message where there is none.

use std::time::{Duration, Instant};

use modelspec_dsl::ir::ModelSpec;
use modelspec_runtime::Params;
use modelspec_runtime::dist::rendezvous::{
    self, RendezvousConfig, RendezvousError, RendezvousFlags, exchange_id,
};
use modelspec_runtime::dist::{
    Communicator, DEFAULT_BUCKET_BYTES, DataParallel, LocalComm, NcclComm, Replica, Sharding,
    split_rows,
};
use modelspec_runtime::train::data::Batcher;
use modelspec_runtime::train::optim::AdamWConfig;
use modelspec_runtime::train::schedule::CosineSchedule;
use modelspec_runtime::train::{CpuObjective, TrainOptions, Trainer};

const STEPS: u64 = 5;
const BATCH: usize = 8;
const SEQ: usize = 32;

fn spec_from(src: &str, file: &str) -> ModelSpec {
    modelspec_dsl::mspec::parse(src, file).expect("spec is valid")
}

fn tiny() -> ModelSpec {
    spec_from(include_str!("../../specs/tiny.mspec"), "specs/tiny.mspec")
}

fn corpus() -> Vec<u32> {
    include_str!("../../data/pride_and_prejudice.txt")
        .bytes()
        .take(64 * 1024)
        .map(u32::from)
        .collect()
}

fn options(clip: f64) -> TrainOptions {
    TrainOptions {
        steps: STEPS,
        batch: BATCH,
        seq: SEQ,
        accumulate: 1,
        schedule: CosineSchedule {
            peak_lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 1,
            total_steps: STEPS,
        },
        adamw: AdamWConfig::default(),
        clip,
        seed: 5,
        policy: None,
        tokenizer: "bytes".into(),
        data: "test".into(),
        data_hash: None,
        save_every: 100,
    }
}

fn max_abs_diff(a: &Params, b: &Params) -> f32 {
    a.iter()
        .map(|(name, t)| {
            let u = b.get(name).expect("same names");
            t.data()
                .iter()
                .zip(u.data())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        })
        .fold(0.0, f32::max)
}

/// Trains with the single-process trainer; `ranks` = None: the plain CPU objective, Some(n): the
/// same objective behind `DataParallel` with n thread ranks.
fn train(spec: &ModelSpec, ranks: Option<usize>, bucket_bytes: usize) -> (Vec<f32>, Params) {
    let params = Params::init(spec, 0);
    let objective = CpuObjective::new(spec, None).unwrap();
    match ranks {
        None => {
            let mut t =
                Trainer::new(objective, spec.clone(), params, options(1.0), corpus()).unwrap();
            while !t.done() {
                t.step().unwrap();
            }
            (t.losses, t.backend.params)
        }
        Some(n) => {
            let dp = DataParallel::new(objective, spec, n, bucket_bytes).unwrap();
            let mut t = Trainer::new(dp, spec.clone(), params, options(1.0), corpus()).unwrap();
            while !t.done() {
                t.step().unwrap();
            }
            (t.losses, t.backend.params)
        }
    }
}

#[test]
fn n_thread_ranks_follow_the_one_rank_loss_curve() {
    let spec = tiny();
    let started = Instant::now();
    let (reference, ref_params) = train(&spec, None, DEFAULT_BUCKET_BYTES);
    println!("1 rank (plain trainer): {reference:?}");
    assert!(
        reference[STEPS as usize - 1] < reference[0],
        "loss falls: {reference:?}"
    );

    // One rank through the data-parallel path is the plain trainer, bit for bit.
    let (one, one_params) = train(&spec, Some(1), DEFAULT_BUCKET_BYTES);
    assert_eq!(one, reference);
    assert_eq!(one_params, ref_params);

    // Small buckets (64 KiB) so that the tiny model's gradient spans many of them.
    for n in [2usize, 4] {
        let (losses, params) = train(&spec, Some(n), 64 * 1024);
        let diffs: Vec<f32> = losses
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let param_diff = max_abs_diff(&params, &ref_params);
        println!(
            "{n} ranks: {losses:?}\n  |Δloss| per step {diffs:?}, max |Δparam| {param_diff:e}"
        );
        for (step, d) in diffs.iter().enumerate() {
            assert!(*d <= 1e-5, "{n} ranks, step {step}: |Δloss| {d} > 1e-5");
        }
        assert!(
            param_diff <= 1e-4,
            "{n} ranks: final params differ by {param_diff}"
        );
    }
    println!("took {:.1?}", started.elapsed());
}

/// Runs `n` replicas (threads) for STEPS steps on the batches the trainer would draw.
fn replicas(spec: &ModelSpec, n: usize, sharding: Sharding, clip: f64) -> (Vec<f32>, Vec<Params>) {
    let opts = options(clip);
    let mut batcher = Batcher::new(corpus(), BATCH, SEQ, opts.seed).unwrap();
    let batches: Vec<Vec<u32>> = (0..STEPS).map(|_| batcher.next_batch()).collect();
    let comms = LocalComm::group_with_timeout(n, Duration::from_secs(120));
    let results: Vec<(Vec<f32>, Params)> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (opts, batches) = (&opts, &batches);
                s.spawn(move || {
                    let rank = comm.rank();
                    let mut objective = CpuObjective::new(spec, None).unwrap();
                    let mut replica = Replica::new(
                        comm,
                        spec,
                        Params::init(spec, 0),
                        opts.adamw,
                        clip,
                        sharding,
                        64 * 1024,
                    );
                    let rows = split_rows(BATCH, n, rank);
                    let mut losses = Vec::new();
                    for (step, batch) in batches.iter().enumerate() {
                        let mine = &batch[rows.start * SEQ..rows.end * SEQ];
                        let lr = opts.schedule.lr(step as u64);
                        let report = replica
                            .step(&mut objective, mine, rows.len(), BATCH, 0, lr)
                            .unwrap();
                        losses.push(report.loss);
                    }
                    (losses, replica.params)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let losses = results[0].0.clone();
    for (rank, (l, _)) in results.iter().enumerate() {
        assert_eq!(l, &losses, "rank {rank} reports the same losses");
    }
    (losses, results.into_iter().map(|(_, p)| p).collect())
}

#[test]
fn replicas_stay_identical_and_zero1_equals_unsharded_adamw() {
    let spec = tiny();
    // One replica is the single-process trainer, bit for bit.
    let (reference, ref_params) = train(&spec, None, DEFAULT_BUCKET_BYTES);
    let (one, one_params) = replicas(&spec, 1, Sharding::None, 1.0);
    assert_eq!(one, reference);
    assert_eq!(one_params[0], ref_params);

    for n in [2usize, 4] {
        let (plain, plain_params) = replicas(&spec, n, Sharding::None, 1.0);
        for p in &plain_params[1..] {
            assert_eq!(
                p, &plain_params[0],
                "every replica holds the same parameters"
            );
        }
        for (a, b) in plain.iter().zip(&reference) {
            assert!(
                (a - b).abs() <= 1e-5,
                "{n} replicas: {plain:?} vs {reference:?}"
            );
        }
        // ZeRO-1 without clipping: the reduce-scatter sums in the same rank order as the
        // all-reduce and AdamW is element-wise, so the steps are identical bit for bit.
        let (plain0, plain0_params) = replicas(&spec, n, Sharding::None, 0.0);
        let (zero0, zero0_params) = replicas(&spec, n, Sharding::Zero1, 0.0);
        assert_eq!(zero0, plain0, "{n} ranks, no clipping");
        for p in &zero0_params {
            assert_eq!(p, &plain0_params[0], "{n} ranks, no clipping");
        }
        // With clipping the global norm is summed shard by shard instead of tensor by tensor (f64,
        // a different order), so the clip factor may differ in its last bit.
        let (zero, zero_params) = replicas(&spec, n, Sharding::Zero1, 1.0);
        let diff = max_abs_diff(&zero_params[0], &plain_params[0]);
        println!("{n} ranks: ZeRO-1 vs unsharded with clipping: max |Δparam| {diff:e}");
        assert!(diff <= 1e-7, "{n} ranks: {diff}");
        for (a, b) in zero.iter().zip(&plain) {
            assert!((a - b).abs() <= 1e-7);
        }
        for p in &zero_params[1..] {
            assert_eq!(
                p, &zero_params[0],
                "all-gather leaves every replica the same"
            );
        }
    }
}

fn random_id() -> [u8; 128] {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut id = [0u8; 128];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    id
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(rank: usize, world: usize, port: u16, timeout: Duration) -> RendezvousConfig {
    let flags = RendezvousFlags {
        rank: Some(rank),
        world_size: Some(world),
        master_addr: Some("127.0.0.1".into()),
        master_port: Some(port),
        local_rank: None,
    };
    let mut cfg = RendezvousConfig::resolve(&flags, |_| None).unwrap();
    cfg.timeout = timeout;
    cfg
}

#[test]
fn rendezvous_hands_every_rank_the_same_id() {
    for world in [1usize, 2, 4] {
        let id = random_id();
        let port = free_port();
        let ids: Vec<[u8; 128]> = std::thread::scope(|s| {
            // Start the other ranks first: they retry until rank 0 listens.
            let handles: Vec<_> = (0..world)
                .rev()
                .map(|rank| {
                    s.spawn(move || {
                        let cfg = config(rank, world, port, Duration::from_secs(20));
                        exchange_id(&cfg, (rank == 0).then_some(id)).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|x| *x == id), "world {world}");
    }
}

#[test]
fn rendezvous_reports_a_world_size_mismatch_on_both_sides() {
    let port = free_port();
    let (r0, r1) = std::thread::scope(|s| {
        let a = s.spawn(move || {
            exchange_id(&config(0, 2, port, Duration::from_secs(20)), Some([1; 128]))
        });
        let b = s.spawn(move || exchange_id(&config(1, 3, port, Duration::from_secs(20)), None));
        (a.join().unwrap(), b.join().unwrap())
    });
    let e0 = r0.unwrap_err();
    let e1 = r1.unwrap_err();
    assert!(matches!(e0, RendezvousError::Mismatch(_)), "{e0}");
    assert!(e0.to_string().contains("world size is 3"), "{e0}");
    assert!(matches!(e1, RendezvousError::Mismatch(_)), "{e1}");
    assert!(e1.to_string().contains("refused rank 1"), "{e1}");
}

#[test]
fn rendezvous_times_out_with_a_clear_error() {
    let port = free_port();
    let err = exchange_id(&config(1, 2, port, Duration::from_millis(300)), None).unwrap_err();
    assert!(
        matches!(err, RendezvousError::Connect { rank: 1, .. }),
        "{err}"
    );
    let err = exchange_id(
        &config(0, 3, port, Duration::from_millis(300)),
        Some([0; 128]),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            RendezvousError::Timeout {
                joined: 1,
                expected: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rendezvous_reads_flags_then_environment() {
    let env = |k: &str| match k {
        "RANK" => Some("2".to_string()),
        "WORLD_SIZE" => Some("4".to_string()),
        "MASTER_ADDR" => Some("10.0.0.7".to_string()),
        "MASTER_PORT" => Some("29611".to_string()),
        "LOCAL_RANK" => Some("0".to_string()),
        _ => None,
    };
    let cfg = RendezvousConfig::resolve(&RendezvousFlags::default(), env).unwrap();
    assert_eq!(
        (
            cfg.rank,
            cfg.world_size,
            cfg.local_rank,
            cfg.master_addr.as_str(),
            cfg.master_port
        ),
        (2, 4, 0, "10.0.0.7", 29611)
    );
    let flags = RendezvousFlags {
        rank: Some(1),
        master_port: Some(1234),
        ..Default::default()
    };
    let cfg = RendezvousConfig::resolve(&flags, env).unwrap();
    assert_eq!((cfg.rank, cfg.world_size, cfg.master_port), (1, 4, 1234));
    let none = RendezvousConfig::resolve(&RendezvousFlags::default(), |_| None).unwrap_err();
    assert!(none.to_string().contains("--rank"), "{none}");
    let bad = RendezvousConfig::resolve(&RendezvousFlags::default(), |k| match k {
        "RANK" => Some("4".into()),
        "WORLD_SIZE" => Some("4".into()),
        _ => None,
    })
    .unwrap_err();
    assert!(bad.to_string().contains("ranks run from 0 to 3"), "{bad}");
    assert_eq!(rendezvous::DEFAULT_PORT, 29500);
}

/// The NCCL path on one GPU: a one-rank communicator's collectives, and data-parallel steps with
/// world size 1 equal to the thread communicator's, bit for bit (a one-rank all-reduce is a copy).
/// MODELSPEC_DIST_SPEC picks the spec (default: tiny); MODELSPEC_DIST_BATCH/SEQ/STEPS the shape.
#[test]
fn nccl_one_rank_runs_the_same_step() {
    use modelspec_runtime::dist::nccl::nccl_available;
    if let Err(e) = nccl_available() {
        println!("skipping the NCCL test: {e}");
        return;
    }
    let gpu = match modelspec_runtime::cuda::Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipping the NCCL test: {e}");
            return;
        }
    };
    let mut comm = NcclComm::single(&gpu).unwrap();
    assert_eq!((comm.rank(), comm.world_size()), (0, 1));
    let mut buf: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let before = buf.clone();
    comm.all_reduce_sum(&mut buf).unwrap();
    assert_eq!(buf, before);
    let mut out = vec![0.0; 1000];
    comm.reduce_scatter_sum(&before, &mut out).unwrap();
    assert_eq!(out, before);
    comm.all_gather(&before, &mut out).unwrap();
    assert_eq!(out, before);
    comm.barrier().unwrap();
    let mut dev = comm.stream().clone_htod(&before).unwrap();
    comm.all_reduce_sum_device(&mut dev).unwrap();
    assert_eq!(comm.stream().clone_dtoh(&dev).unwrap(), before);
    println!("NCCL one-rank collectives: ok on {}", gpu.name());

    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let spec = match std::env::var("MODELSPEC_DIST_SPEC") {
        Ok(path) => spec_from(&std::fs::read_to_string(&path).unwrap(), &path),
        Err(_) => tiny(),
    };
    let (batch, seq, steps) = (
        env("MODELSPEC_DIST_BATCH", 4),
        env("MODELSPEC_DIST_SEQ", 32),
        env("MODELSPEC_DIST_STEPS", 3),
    );
    let mut batcher = Batcher::new(corpus(), batch, seq, 1).unwrap();
    let batches: Vec<Vec<u32>> = (0..steps).map(|_| batcher.next_batch()).collect();
    let run = |comm: Box<dyn Communicator>| {
        let mut objective = CpuObjective::new(&spec, None).unwrap();
        let mut replica = Replica::new(
            comm,
            &spec,
            Params::init(&spec, 0),
            AdamWConfig::default(),
            1.0,
            Sharding::Zero1,
            DEFAULT_BUCKET_BYTES,
        );
        let mut losses = Vec::new();
        for (step, b) in batches.iter().enumerate() {
            let t = Instant::now();
            let r = replica
                .step(&mut objective, b, batch, batch, 0, 1e-3)
                .unwrap();
            println!(
                "  step {step}: loss {:.6} |g| {:.4} ({:.2?})",
                r.loss,
                r.grad_norm,
                t.elapsed()
            );
            losses.push(r.loss);
        }
        (losses, replica.params)
    };
    println!(
        "{} ({} params), batch {batch}x{seq}, ZeRO-1, NCCL world 1:",
        spec.name,
        Params::<f32>::zeros(&spec).numel()
    );
    let (nccl, nccl_params) = run(Box::new(comm));
    println!("same with LocalComm world 1:");
    let local = LocalComm::group(1).pop().unwrap();
    let (thread, thread_params) = run(Box::new(local));
    assert_eq!(nccl, thread);
    assert_eq!(nccl_params, thread_params);
    println!("NCCL world-1 DP steps equal the thread communicator's bit for bit: {nccl:?}");
}

/// `--device cuda --gpus 1`: the GPU data-parallel run (forward and backward on the GPU, NCCL
/// world of one, AdamW on the host) follows the CPU trainer's curve on the same batches, up to the
/// GPU kernels' f32 rounding. Skips without a GPU and libnccl.
#[test]
fn gpu_data_parallel_follows_the_cpu_curve() {
    use modelspec_runtime::cuda::Dtype;
    use modelspec_runtime::dist::gpu::GpuDataParallel;
    use modelspec_runtime::dist::nccl::nccl_available;
    if let Err(e) = nccl_available().and_then(|_| Ok(modelspec_runtime::cuda::probe(0)?)) {
        println!("skipping the GPU data-parallel test: {e}");
        return;
    }
    let spec = tiny();
    let (reference, _) = train(&spec, None, DEFAULT_BUCKET_BYTES);
    let opts = options(1.0);
    let run = GpuDataParallel {
        spec: &spec,
        options: &opts,
        dtype: Dtype::F32,
        bucket_bytes: DEFAULT_BUCKET_BYTES,
        sharding: Sharding::None,
    };
    let result = run
        .run_local(1, Params::init(&spec, 0), &corpus(), &|_| {})
        .unwrap();
    println!("CPU: {reference:?}\nGPU: {:?}", result.losses);
    for (step, (g, c)) in result.losses.iter().zip(&reference).enumerate() {
        assert!((g - c).abs() <= 1e-3, "step {step}: GPU {g} vs CPU {c}");
    }
    assert_eq!(result.state.step, STEPS);
}
