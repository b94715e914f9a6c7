//! The CUDA backend without a GPU: kernels compile under NVRTC wherever NVRTC is installed (no
//! device needed), and every entry point fails cleanly, never panics, without a driver.

use modelspec_runtime::cuda::{CudaError, Gpu, KernelSource, compile};

#[test]
#[ignore = "needs NVRTC (the CUDA toolkit)"]
fn kernel_library_compiles_with_nvrtc() {
    if !compile::nvrtc_present() {
        println!("skipping: no NVRTC library on this machine");
        return;
    }
    // A private cache folder so this test really compiles.
    let dir = std::env::temp_dir().join(format!(
        "modelspec-kernel-cache-test-{}",
        std::process::id()
    ));
    // SAFETY: set before any other thread of this test binary reads it; tests in this file do not
    // read the variable concurrently.
    unsafe { std::env::set_var("MODELSPEC_KERNEL_CACHE", &dir) };
    let src = KernelSource::library("compile_test", &[64, 128, 256], Default::default());
    let (ptx, cached) = compile::compile(&src, "compute_90").expect("library compiles");
    assert!(!cached);
    // Instantiated for specs: the norms' compile-time widths (the register-held vector path), the
    // classifier's padded vocabulary, and the dense MLP's width and activation and the RoPE
    // shape (the specialised activation and rope bodies beside their generic ones): gpt2 (no
    // RoPE), llama-3.2-1b (SwiGLU, GQA 32/8), a gemma-like one (GeGLU-tanh, MQA, partial RoPE).
    for (d_model, vocab, spec) in [
        ("768", "50304", &[("MS_D_FF", "3072"), ("MS_ACT", "1")][..]),
        (
            "2048",
            "128256",
            &[
                ("MS_D_FF", "8192"),
                ("MS_ACT", "3"),
                ("MS_N_HEADS", "32"),
                ("MS_N_KV_HEADS", "8"),
                ("MS_HEAD_DIM", "64"),
                ("MS_ROPE_DIMS", "64"),
            ][..],
        ),
        (
            "96",
            "160",
            &[
                ("MS_D_FF", "200"),
                ("MS_ACT", "5"),
                ("MS_N_HEADS", "4"),
                ("MS_N_KV_HEADS", "1"),
                ("MS_HEAD_DIM", "24"),
                ("MS_ROPE_DIMS", "12"),
            ][..],
        ),
    ] {
        let defines = [("MS_D_MODEL", d_model), ("MS_LOGITS_LD", vocab)]
            .iter()
            .chain(spec)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let spec_src = KernelSource::library("compile_test_spec", &[64], defines);
        let (spec_ptx, _) = compile::compile(&spec_src, "compute_90")
            .unwrap_or_else(|e| panic!("d_model {d_model}: {e}"));
        // The cross-entropy's row-resident kernels carry the stride they were planned for, and
        // the block size of their plan (cross_entropy.cu's XentRowPlan, the launcher's row_plan):
        // 512 threads (two blocks an SM) for rows of at most 17 vectors a thread (5 in registers,
        // 12 in 96 KB of shared memory: 139264 bytes), else 1024.
        for (dt, es) in [("f32", 4), ("bf16", 2)] {
            let entry = format!(".entry xent_row_{dt}_{vocab}(");
            let at = spec_ptx
                .find(&entry)
                .unwrap_or_else(|| panic!("{entry} missing from the PTX"));
            let threads = if vocab.parse::<usize>().unwrap() * es <= 139_264 {
                512
            } else {
                1024
            };
            let bound = format!(".maxntid {threads}, 1, 1");
            assert_eq!(
                spec_ptx[at..].find(".maxntid"),
                spec_ptx[at..].find(&bound),
                "{entry}: expected {bound}"
            );
        }
    }
    for name in [
        "norm_fwd_bf16",
        "copy2d_bf16",
        "copy2d_f32",
        "norm_bwd_f32",
        "norm_fwd_warp_bf16",
        "norm_bwd_warp_f32",
        "norm_bwd_dw_warp_bf16",
        "colred_sum_bf16",
        "colred_norm_f32",
        "rope_bf16",
        "act_fwd_f32",
        "xent_bf16",
        "adamw_f32",
        "adamw_bf16",
        "grad_sum_f32",
        "sumsq_partials_f32",
        "sum_partials_f64",
        "attn_fwd_bf16_d128",
        "attn_bwd_bf16_d64",
        "attn_simple_dkv_f32",
        "mla_split_bf16",
        "mla_merge_f32",
    ] {
        assert!(
            ptx.contains(&format!(".entry {name}(")),
            "kernel {name} missing from the PTX"
        );
    }
    assert!(!ptx.contains(".entry attn_bwd_bf16_d256("));
    assert!(!ptx.contains(".entry colred_finish("));
    // Every attention kernel takes the ALiBi slopes as its last parameter.
    for last in [
        "attn_simple_fwd_f32_param_18",
        "attn_simple_dq_bf16_param_20",
        "attn_simple_dkv_f32_param_21",
        "attn_fwd_bf16_d128_param_16",
        "attn_bwd_bf16_d64_param_20",
        // AdamW: the decay boundary, the host's eight scalars and two gradient scales.
        "adamw_f32_param_16",
        // The column reductions: outputs, counters, partial sums, inputs, sizes, one launch.
        "colred_sum_bf16_param_8",
        "colred_norm_f32_param_12",
    ] {
        assert!(ptx.contains(last), "{last} missing from the PTX");
    }
    let (again, cached) = compile::compile(&src, "compute_90").expect("cache hit");
    assert!(cached);
    assert_eq!(again, ptx);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs NVRTC (the CUDA toolkit)"]
fn nvrtc_errors_carry_the_log() {
    if !compile::nvrtc_present() {
        println!("skipping: no NVRTC library on this machine");
        return;
    }
    let src = KernelSource {
        name: "broken".into(),
        defines: Default::default(),
        body: "extern \"C\" __global__ void f() { undefined_thing(); }".into(),
    };
    match compile::compile(&src, "compute_90") {
        Err(CudaError::Compile { module, log, .. }) => {
            assert_eq!(module, "broken");
            assert!(log.contains("undefined_thing"), "{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn opening_a_device_never_panics() {
    match Gpu::new(0) {
        Ok(gpu) => println!("CUDA device present: {}", gpu.name()),
        Err(e @ (CudaError::MissingLibrary { .. } | CudaError::NoDevice { .. })) => {
            println!("skipping: no CUDA device ({e})");
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
    // A device ordinal far past any machine's count is a typed error either way.
    assert!(Gpu::new(10_000).is_err());
}

/// The own Hopper GEMM compiles for `compute_90a` (its `wgmma` exist only there) and its entry
/// takes the two tensor maps by value (128 bytes each, 64-byte aligned) before its other
/// parameters.
#[test]
#[ignore = "needs NVRTC (the CUDA toolkit)"]
fn hopper_gemm_compiles_for_sm90a() {
    if !compile::nvrtc_present() {
        println!("skipping: no NVRTC library on this machine");
        return;
    }
    let src = KernelSource {
        name: "hopper_gemm_compile_test".into(),
        defines: Default::default(),
        body: modelspec_runtime::cuda::gemm::hopper::SOURCE.into(),
    };
    let (ptx, _) = compile::compile(&src, "compute_90a").expect("hopper.cu compiles");
    for entry in [
        "hopper_gemm_bf16",
        "hopper_gemm_bias_bf16",
        "hopper_gemm_gelu_aux_bf16",
        "hopper_gemm_n256_bf16",
        "hopper_gemm_n256_bias_bf16",
        "hopper_gemm_n256_gelu_aux_bf16",
        "hopper_gemm_dgelu_bf16",
        "hopper_gemm_n256_dgelu_bf16",
        "hopper_gemm_pp_bf16",
        "hopper_gemm_pp_bias_bf16",
        "hopper_gemm_pp_gelu_aux_bf16",
        "hopper_gemm_pp_dgelu_bf16",
        "hopper_gemm_pc_bf16",
        "hopper_gemm_pc_bias_bf16",
        "hopper_gemm_pc_gelu_aux_bf16",
        "hopper_gemm_pc_dgelu_bf16",
        "hopper_transpose_bf16",
    ] {
        assert!(ptx.contains(&format!(".entry {entry}(")), "{entry} missing");
    }
    assert!(ptx.contains("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16"));
    assert!(ptx.contains("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16"));
    assert!(ptx.contains("setmaxnreg.inc.sync.aligned.u32 232"));
    assert!(ptx.contains("cp.async.bulk.tensor.2d"));
    // The cluster ping-pong: B's half-tiles multicast, releases to the peer's barriers, and the
    // cluster shape in the entry's directives.
    assert!(ptx.contains(".multicast::cluster"));
    assert!(ptx.contains("mapa.shared::cluster.u32"));
    assert!(ptx.contains(".reqnctapercluster 2, 1, 1"), "cluster dims");
    assert!(
        ptx.contains(".param .align 64 .b8 hopper_gemm_bf16_param_0[128]"),
        "map param"
    );
}

/// The own Hopper attention forward compiles for `compute_90a`: both head dims' and both
/// schedules' entries, each
/// taking its three tensor maps by value first, with the wgmma forms it needs (S from two shared
/// tiles; O from P in registers and V's transposed tile).
#[test]
#[ignore = "needs NVRTC (the CUDA toolkit)"]
fn hopper_attention_compiles_for_sm90a() {
    if !compile::nvrtc_present() {
        println!("skipping: no NVRTC library on this machine");
        return;
    }
    let src = modelspec_runtime::cuda::HopperAttention::source();
    let (ptx, _) = compile::compile(&src, "compute_90a").expect("attention_hopper.cu compiles");
    for (d, plain) in [64, 128]
        .into_iter()
        .flat_map(|d| ["", "plain_", "poly_", "pp_"].map(|s| (d, s)))
    {
        let entry = format!("attn_hopper_fwd_{plain}d{d}");
        assert!(ptx.contains(&format!(".entry {entry}(")), "{entry} missing");
        assert!(
            ptx.contains(&format!(".param .align 64 .b8 {entry}_param_2[128]")),
            "{entry}'s third map"
        );
        assert!(
            ptx.contains(&format!(
                "wgmma.mma_async.sync.aligned.m64n{d}k16.f32.bf16.bf16"
            )),
            "P V at n{d}"
        );
    }
    assert!(ptx.contains("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16"));
    assert!(ptx.contains("cp.async.bulk.tensor.2d"));
    assert!(ptx.contains("setmaxnreg.dec.sync.aligned.u32 40"));
    // Three consumer warpgroups (192 queries a tile): 152 registers a consumer thread.
    assert!(ptx.contains(".entry attn_hopper_fwd_plain_m192_d64("));
    assert!(ptx.contains("setmaxnreg.inc.sync.aligned.u32 152"));
    // The backward's first step: four tensor maps (Q, K, V, dO) by value, and dQ's product from
    // the transposed dS^T in shared memory.
    assert!(ptx.contains(".entry attn_hopper_bwd_d64("));
    assert!(ptx.contains(".param .align 64 .b8 attn_hopper_bwd_d64_param_3[128]"));
    assert!(ptx.contains("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16"));
}
