//! `kernel_ptx SPEC [OUT]`: the kernel library instantiated for a spec (what `--device cuda`
//! loads for it), compiled by NVRTC for compute_90 without a GPU, its PTX written to OUT
//! (default `<spec name>.ptx`). `bench/ptxas_report.sh` runs ptxas over it to list every
//! kernel's registers and spills, so register pressure can be checked before a GPU call.
//! Needs NVRTC (e.g. PyTorch's `nvidia/cu13/lib` on `LD_LIBRARY_PATH`).

use modelspec_runtime::cuda::{KernelSource, compile};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(spec_path) = args.next() else {
        eprintln!("usage: kernel_ptx SPEC [OUT]");
        std::process::exit(2);
    };
    let spec = match modelspec_dsl::load::load_file(&spec_path) {
        Ok((spec, _)) => spec,
        Err(e) => {
            eprintln!("error: {spec_path}: {e}");
            std::process::exit(1);
        }
    };
    let out = args.next().unwrap_or_else(|| format!("{}.ptx", spec.name));
    let inst = modelspec_dsl::codegen::kernel_instance(&spec);
    let src = KernelSource::library(&inst.name, &inst.head_dims, inst.defines.clone());
    let ptx = match compile::compile(&src, "compute_90") {
        Ok((ptx, _)) => ptx,
        Err(e) => {
            eprintln!("error: compiling the library for {}: {e}", spec.name);
            std::process::exit(1);
        }
    };
    if let Err(e) = std::fs::write(&out, ptx) {
        eprintln!("error: writing {out}: {e}");
        std::process::exit(1);
    }
    println!("{out}");
}
