//! A generated model carries its kernel walk (`{Type}Kernels::KERNELS`) and its GPU executors run
//! it: the walk equals the runtime's lowering of the embedded spec, and a walk that does not (a
//! stale generated file) is refused by name when the model is placed on a GPU, before the device
//! is opened, so these tests need no GPU.

use modelspec::__private::v1::{Act, Fusion, KernelRow, init_walk_on};
use modelspec::dsl::program::{check_walk, lowered_walk};
use modelspec::{Device, Model};

modelspec::model! {
    model walk_gen {
        vocab 61 d_model 24 layers 3 context 32
        attention { heads 4 kv_heads 2 }
        mlp swiglu(hidden = 40)
        layers[2] { attention { qk_norm rms(eps = 1e-6) } }
    }
}

/// `KERNELS` with layer `layer`'s kernel `kernel` changed by `edit`, leaked to `'static` as
/// generated code's constants are.
fn tampered(
    layer: usize,
    kernel: usize,
    edit: impl FnOnce(&mut KernelRow),
) -> &'static [&'static [KernelRow]] {
    let mut rows: Vec<&'static [KernelRow]> = WalkGenKernels::KERNELS.to_vec();
    let mut one = rows[layer].to_vec();
    edit(&mut one[kernel]);
    rows[layer] = Vec::leak(one);
    Vec::leak(rows)
}

#[test]
fn the_generated_walk_is_the_lowering_of_the_embedded_spec() {
    let spec = WalkGen::spec().unwrap();
    let lowered = lowered_walk(spec);
    assert_eq!(check_walk(spec, WalkGenKernels::KERNELS).unwrap(), lowered);
    // Layer 2's qk-norm gives it a walk of its own.
    assert_eq!(WalkGenKernels::KERNELS[0], WalkGenKernels::WALK_0);
    assert_eq!(WalkGenKernels::KERNELS[2], WalkGenKernels::WALK_1);
    assert_ne!(WalkGenKernels::WALK_0, WalkGenKernels::WALK_1);
}

#[test]
fn a_tampered_walk_is_refused_with_the_layer_and_kernel() {
    let spec = WalkGen::spec().unwrap();
    // Layer 1's attention (kernel 2) launched as a projection.
    let walk = tampered(1, 2, |row| row.fusion = Fusion::Linear);
    let err = init_walk_on(&Device::Cuda(0), spec, walk, 0)
        .expect_err("a stale walk is refused")
        .to_string();
    assert!(err.contains("kernel walk of `walk_gen` is stale"), "{err}");
    assert!(
        err.contains("layer 1, kernel 2 is `Linear(attn) <- q_rope, k_rope, v`"),
        "{err}"
    );
    assert!(
        err.contains("but `Attention(attn) <- q_rope, k_rope, v`"),
        "{err}"
    );
    assert!(err.contains("regenerate the code"), "{err}");

    // A kernel reading another activation, and a walk missing a layer.
    let walk = tampered(2, 3, |row| row.inputs = &[Act::Q]);
    let err = init_walk_on(&Device::Cuda(0), spec, walk, 0).expect_err("refused");
    assert!(err.to_string().contains("layer 2, kernel 3"), "{err}");
    let short: &'static [&'static [KernelRow]] = &WalkGenKernels::KERNELS[..2];
    let err = init_walk_on(&Device::Cuda(0), spec, short, 0)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("it has 2 layers, the spec 3"),
        "{err}"
    );
}

#[test]
fn the_real_walk_passes_the_check_and_the_cpu_ignores_it() {
    let spec = WalkGen::spec().unwrap();
    // On a GPU the check passes; what fails after it (here: no device) is not about the walk.
    if let Err(e) = init_walk_on(&Device::Cuda(0), spec, WalkGenKernels::KERNELS, 0) {
        assert!(!e.to_string().contains("stale"), "{e}");
    }
    // On the CPU the generated steps run and the walk is not read.
    let model = WalkGen::init(&Device::cpu(), 3).unwrap();
    let tokens: Vec<u32> = (0..16).map(|i| (i * 5 % 61) as u32).collect();
    assert_eq!(
        model.logits(&tokens, 2).unwrap().len(),
        16 * WalkGen::VOCAB_PADDED
    );
}
