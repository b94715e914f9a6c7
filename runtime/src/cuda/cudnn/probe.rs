//! Finding libcudnn and its version, and loading the one file every cuDNN call then goes through.
//!
//! cudarc's cuDNN bindings `dlopen` the library by name at their first call and panic when it is
//! missing or lacks a symbol; by name, the dynamic linker picks the first `libcudnn.so` on its
//! paths, which on a machine with a system cuDNN and a newer one in PyTorch's wheel is the older
//! one (the GPU machine has 9.14 as `libcudnn.so` beside the wheel's 9.19, which PyTorch runs).
//! So this module chooses the file itself, keeps it loaded and resolves the entry points from it
//! (`api.rs` beside this file); cudarc's loader is never used.
//!
//! Only one cuDNN 9 can be asked anything per process: `libcudnn.so.9` is a shim whose first
//! call (`cudnnGetVersion` included) opens its sub-libraries by soname (`libcudnn_graph.so.9`,
//! ...), and once one copy's are open every later shim binds to them. (The eighth session's
//! probe loaded the system 9.14 first, so the wheel's 9.19 shim then reported 9.14 too, and the
//! system copy won the tie.) So candidates are ranked by the version they declare without being
//! loaded (`declared_version`: the file's resolved name, `libcudnn.so.9.14.0`, or the
//! `cudnn_version.h` of the install), and the first that loads and reports 9.0 or newer is the
//! one; the others are listed in [`CudnnLibrary::passed_over`].
//!
//! Choice: `MODELSPEC_CUDNN_LIB` (the file, or its folder), when set, is the only candidate.
//! Otherwise, highest declared version first (undeclared last; the first of equals wins), among:
//! 1. `CUDNN_PATH` (an install root or folder);
//! 2. every `LD_LIBRARY_PATH` folder, `CUDA_HOME`/`CUDA_PATH`, `/usr/local/cuda`, the system
//!    library folders;
//! 3. Python's `nvidia/cudnn/lib` (the `nvidia-cudnn-cu*` wheels PyTorch installs) under the
//!    usual site-packages folders, then as `python3` itself reports it;
//! 4. last, what the linker resolves by name (`libcudnn.so`, ..., `libcudnn.so.9`).

use super::api::Api;
use super::error::{CudnnError, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Oldest cuDNN the graphs here are written for (9.0.0).
pub const MIN_VERSION: usize = 90000;

/// Oldest cuDNN whose fused attention takes a value head dim apart from the query/key head dim
/// (8.9.6; the runtime fusion engine's SDPA pattern with `d_qk != d_v`). Below [`MIN_VERSION`],
/// so every library the probe accepts has it; the check stays so the requirement is stated once.
pub const SPLIT_HEAD_DIMS_VERSION: usize = 80906;

/// Oldest cuDNN whose Hopper forward takes head dims above 128 (up to 256): 9.1.0.
pub const WIDE_HEAD_FWD_VERSION: usize = 90100;

/// Oldest cuDNN whose Hopper backward takes head dims above 128 (up to 256): 9.5.0.
pub const WIDE_HEAD_BWD_VERSION: usize = 90500;

/// cuDNN releases whose Hopper backward is known to be wrong for some latent-attention head
/// dims (both at least 128 and unequal, other than DeepSeek's 192/128): 9.11.0 up to 9.13.0;
/// 9.13.1 has the fix.
pub const SPLIT_HEAD_DIMS_BWD_BUG: std::ops::Range<usize> = 91100..91301;

/// The cuDNN library this process uses.
#[derive(Debug, Clone)]
pub struct CudnnLibrary {
    /// The file that was loaded (or the name the linker resolved).
    pub path: String,
    /// `cudnnGetVersion()`: major*10000 + minor*100 + patch for cuDNN 9.
    pub version: usize,
    /// The other cuDNN files found, each with the version it declares and why it was not
    /// chosen ("" when there were none): what to look at when the choice surprises.
    pub passed_over: String,
}

impl CudnnLibrary {
    /// The version as `9.10.2`.
    pub fn version_string(&self) -> String {
        version_string(self.version)
    }

    /// Why this library cannot run fused attention with query/key head dim `d_qk` and value
    /// head dim `d_v` (forward, and with `backward` the backward too) on a GPU whose compute
    /// capability's major number is `sm_major`, or `None` when its version allows it. Only what
    /// the version decides is checked here (the shape's static limits are
    /// [`CudnnAttention::unsupported_reason`](super::CudnnAttention::unsupported_reason)'s, and
    /// what the architecture itself lacks shows when the plan is built):
    /// - `d_qk != d_v` needs [`SPLIT_HEAD_DIMS_VERSION`];
    /// - on Hopper (`sm_major == 9`), head dims above 128 need [`WIDE_HEAD_FWD_VERSION`] for the
    ///   forward and [`WIDE_HEAD_BWD_VERSION`] for the backward;
    /// - on Hopper, the backward of unequal head dims both at least 128 (other than 192/128) is
    ///   refused in [`SPLIT_HEAD_DIMS_BWD_BUG`] (those releases compute it wrongly).
    pub fn head_dims_reason(
        &self,
        sm_major: u32,
        d_qk: usize,
        d_v: usize,
        backward: bool,
    ) -> Option<String> {
        let v = self.version;
        let have = self.version_string();
        if d_qk != d_v && v < SPLIT_HEAD_DIMS_VERSION {
            return Some(format!(
                "a value head dim {d_v} apart from the query/key head dim {d_qk} needs cuDNN {} \
                 or newer (loaded: {have})",
                version_string(SPLIT_HEAD_DIMS_VERSION)
            ));
        }
        if sm_major != 9 {
            return None;
        }
        let widest = d_qk.max(d_v);
        let (need, pass) = if backward {
            (WIDE_HEAD_BWD_VERSION, "backward")
        } else {
            (WIDE_HEAD_FWD_VERSION, "forward")
        };
        if widest > 128 && v < need {
            return Some(format!(
                "head dim {widest} above 128 in the Hopper {pass} needs cuDNN {} or newer \
                 (loaded: {have})",
                version_string(need)
            ));
        }
        if backward
            && SPLIT_HEAD_DIMS_BWD_BUG.contains(&v)
            && d_qk != d_v
            && d_qk >= 128
            && d_v >= 128
            && (d_qk, d_v) != (192, 128)
        {
            return Some(format!(
                "the Hopper backward of head dims {d_qk}/{d_v} is known to be wrong in cuDNN \
                 {have} (fixed in {})",
                version_string(SPLIT_HEAD_DIMS_BWD_BUG.end)
            ));
        }
        None
    }
}

/// `major*10000 + minor*100 + patch` as `9.10.2`.
fn version_string(v: usize) -> String {
    format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
}

/// cuDNN 9's version number, as `cudnnGetVersion` reports it (the inverse of [`version_string`]).
fn version_number(major: usize, minor: usize, patch: usize) -> usize {
    major * 10000 + minor * 100 + patch
}

/// Sub-libraries of cuDNN 9, in load order (the graph library first: the others link to it).
/// The wheels' files find each other through `$ORIGIN` already; loading them by full path also
/// covers copies or symlinks without it. Names a release lacks are skipped.
const SUBLIBS: [&str; 9] = [
    "libcudnn_graph.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_tensor_ir.so.9",
    "libcudnn_heuristic.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_adv.so.9",
    "libcudnn_ext.so.9",
];

/// Why the search failed, kept for every later call of [`probe`].
#[derive(Debug, Clone)]
enum Failure {
    /// Nothing loadable; the places searched.
    NotFound(String),
    /// The newest file found, and its version (below [`MIN_VERSION`]).
    TooOld(String, usize),
}

/// The chosen library and its entry points.
struct Loaded {
    library: CudnnLibrary,
    api: Api,
}

static PROBED: OnceLock<std::result::Result<Loaded, Failure>> = OnceLock::new();

/// Finds, version-checks and loads libcudnn once per process. Never panics; the error names
/// every place searched.
pub fn probe() -> Result<CudnnLibrary> {
    match PROBED.get_or_init(search) {
        Ok(l) => Ok(l.library.clone()),
        Err(Failure::NotFound(searched)) => Err(CudnnError::NotFound {
            searched: searched.clone(),
        }),
        Err(Failure::TooOld(path, version)) => Err(CudnnError::TooOld {
            path: path.clone(),
            version: *version,
        }),
    }
}

/// The entry points of the probed library. Only reachable after [`probe`] succeeded (every cuDNN
/// object here is made from a [`super::CudnnAttention`], whose constructor probes).
pub(crate) fn api() -> &'static Api {
    match PROBED.get() {
        Some(Ok(l)) => &l.api,
        _ => unreachable!("cuDNN called before probe() found the library"),
    }
}

/// Outcome of trying one candidate.
enum Tried {
    /// Loaded: the library, its version and the file it came from.
    Ok(libloading::Library, usize, PathBuf),
    Old(usize),
    Bad(String),
}

/// Loads `name` and asks its version, having first loaded the sub-libraries beside the file it
/// resolved to (so the shim binds to its own release's). After an `Ok` or an `Old` this process
/// is committed to that release's sub-libraries: see the module's notes.
fn try_load(name: &std::ffi::OsStr) -> Tried {
    // SAFETY: loading cuDNN runs its initialisers, which only register its own state.
    let lib = match unsafe { libloading::Library::new(name) } {
        Ok(l) => l,
        Err(e) => return Tried::Bad(first_line(&e.to_string())),
    };
    // SAFETY: cudnnGetVersion has this signature in every cuDNN release; the pointer is used
    // while `lib` is alive (it is returned with it).
    let get_version =
        match unsafe { lib.get::<unsafe extern "C" fn() -> usize>(b"cudnnGetVersion\0") } {
            Ok(f) => *f,
            Err(_) => return Tried::Bad("no cudnnGetVersion symbol".into()),
        };
    let Some(file) = file_of(get_version as *const std::ffi::c_void) else {
        return Tried::Bad("the linker cannot say which file it loaded".into());
    };
    if let Some(dir) = file.parent() {
        preload_sublibs(dir);
    }
    // SAFETY: as above.
    let version = unsafe { get_version() };
    if version < MIN_VERSION {
        return Tried::Old(version);
    }
    Tried::Ok(lib, version, file)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

/// The file a loaded library came from (what a by-name load resolved to), via `dladdr` on the
/// address `addr` of one of its symbols; `None` if the linker cannot say.
fn file_of(addr: *const std::ffi::c_void) -> Option<PathBuf> {
    // SAFETY: Dl_info is plain C data; all zeroes is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address and fills `info`; dli_fname points into the
    // linker's own storage for the loaded object, copied out at once.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr succeeded, so dli_fname is a NUL-terminated path.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let p = PathBuf::from(name.to_string_lossy().into_owned());
    Some(std::fs::canonicalize(&p).unwrap_or(p))
}

/// The version a cuDNN file declares without being loaded: its name once links are resolved
/// (`libcudnn.so.9.14.0`, as the system packages install it), else the `cudnn_version.h` (or
/// `cudnn_version_v9.h`) of its install: `../include` beside its folder (the wheels and the
/// tarballs), `/usr/include` and `/usr/include/<triplet>` for the system folders; else, for a
/// Python wheel, its dist-info folder's name.
pub(crate) fn declared_version(file: &Path) -> Option<usize> {
    let real = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    if let Some(v) = real
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(version_from_name)
    {
        return Some(v);
    }
    let dir = real.parent()?;
    let mut includes = vec![dir.join("../include")];
    if dir.starts_with("/usr/lib") || dir.starts_with("/lib") {
        includes.push(PathBuf::from("/usr/include"));
        if let Some(triplet) = dir
            .file_name()
            .filter(|t| t.to_string_lossy().contains("-linux-"))
        {
            includes.push(Path::new("/usr/include").join(triplet));
        }
    }
    includes
        .iter()
        .find_map(|inc| {
            ["cudnn_version.h", "cudnn_version_v9.h"]
                .iter()
                .find_map(|h| version_from_header(&std::fs::read_to_string(inc.join(h)).ok()?))
        })
        .or_else(|| wheel_version(dir))
}

/// For a wheel's `site-packages/nvidia/cudnn/lib`: the version in the name of the
/// `nvidia_cudnn_cu*-X.Y.Z.B.dist-info` folder beside `nvidia/` (a wheel without headers).
fn wheel_version(lib_dir: &Path) -> Option<usize> {
    let site = lib_dir.parent()?.parent()?.parent()?;
    (lib_dir.ends_with("nvidia/cudnn/lib")).then_some(())?;
    std::fs::read_dir(site)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| version_from_dist_info(&n))
        .max()
}

/// `nvidia_cudnn_cu13-9.19.0.56.dist-info` -> 91900.
fn version_from_dist_info(name: &str) -> Option<usize> {
    let rest = name
        .strip_prefix("nvidia_cudnn_cu")?
        .strip_suffix(".dist-info")?;
    let (_, version) = rest.split_once('-')?;
    let mut parts = version.split('.').map(|p| p.parse::<usize>().ok());
    let (major, minor, patch) = (parts.next()??, parts.next()??, parts.next()??);
    Some(version_number(major, minor, patch))
}

/// `libcudnn.so.9.14.0` -> 91400; `None` unless the name carries all three numbers.
fn version_from_name(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("libcudnn.so.")?;
    let parts: Vec<usize> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [major, minor, patch] => Some(version_number(major, minor, patch)),
        _ => None,
    }
}

/// The version `cudnn_version.h` defines (`CUDNN_MAJOR`, `CUDNN_MINOR`, `CUDNN_PATCHLEVEL`).
fn version_from_header(text: &str) -> Option<usize> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("#define") && w.next() == Some(key))
                .then(|| w.next()?.parse::<usize>().ok())
                .flatten()
        })
    };
    Some(version_number(
        get("CUDNN_MAJOR")?,
        get("CUDNN_MINOR")?,
        get("CUDNN_PATCHLEVEL")?,
    ))
}

/// One candidate: what to load, whether it is a by-name load, and the version its file declares.
struct Candidate {
    name: std::ffi::OsString,
    by_name: bool,
    declared: Option<usize>,
}

fn search() -> std::result::Result<Loaded, Failure> {
    let mut notes: Vec<String> = Vec::new();
    let mut too_old: Option<(String, usize)> = None;
    let mut cands: Vec<Candidate> = Vec::new();
    let file = |p: PathBuf| Candidate {
        declared: declared_version(&p),
        name: p.into_os_string(),
        by_name: false,
    };
    if let Some(v) = std::env::var_os("MODELSPEC_CUDNN_LIB") {
        let p = PathBuf::from(v);
        notes.push(format!("MODELSPEC_CUDNN_LIB={}", p.display()));
        if p.is_dir() {
            cands.extend(["libcudnn.so.9", "libcudnn.so"].map(|n| file(p.join(n))));
        } else {
            if !p.is_file() {
                notes.push(format!("{} (no such file)", p.display()));
            }
            cands.push(file(p));
        }
    } else {
        // Files, one a real file (links resolved), highest declared version first.
        let mut seen = std::collections::BTreeSet::new();
        cands.extend(
            candidate_files(&mut notes)
                .into_iter()
                .filter(|f| f.is_file())
                .filter(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())))
                .map(file),
        );
        cands.sort_by_key(|c| std::cmp::Reverse(c.declared));
        notes.push("the dynamic linker's paths (libcudnn.so, libcudnn.so.9, ...)".into());
        cands.extend(
            cudarc::get_lib_name_candidates("cudnn")
                .into_iter()
                .map(|n| Candidate {
                    name: n.into(),
                    by_name: true,
                    declared: None,
                }),
        );
    }
    let declared = |c: &Candidate| c.declared.map_or("no version".into(), version_string);
    // The first that loads and is new enough; nothing after it is loaded.
    let mut chosen = None;
    let mut passed_over: Vec<String> = Vec::new();
    for c in &cands {
        let shown = Path::new(&c.name).display().to_string();
        if chosen.is_some() {
            if !c.by_name {
                passed_over.push(format!("{shown} (declares {}; not loaded)", declared(c)));
            }
            continue;
        }
        match try_load(&c.name) {
            Tried::Ok(lib, version, file) => chosen = Some((lib, version, file)),
            Tried::Old(v) => {
                let why = format!("{shown} (version {}, too old)", version_string(v));
                notes.push(why.clone());
                passed_over.push(why);
                if too_old.as_ref().is_none_or(|o| v > o.1) {
                    too_old = Some((shown, v));
                }
            }
            Tried::Bad(why) => {
                if !c.by_name {
                    notes.push(format!("{shown} ({why})"));
                    passed_over.push(format!("{shown} ({why})"));
                }
            }
        }
    }
    let Some((lib, version, file)) = chosen else {
        return Err(match too_old {
            Some((path, v)) => Failure::TooOld(path, v),
            None => Failure::NotFound(notes.join("; ")),
        });
    };
    // Kept loaded for the process: the entry points below point into it.
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    let path = file.display().to_string();
    let api = Api::resolve(lib).map_err(|why| Failure::NotFound(format!("{path}: {why}")))?;
    Ok(Loaded {
        library: CudnnLibrary {
            path,
            version,
            passed_over: passed_over.join("; "),
        },
        api,
    })
}

/// Loads cuDNN's sub-libraries from `dir` by full path, so the shim finds them by soname even
/// when `dir` is on no search path. Missing ones are left to the shim (it reports them).
fn preload_sublibs(dir: &Path) {
    for name in SUBLIBS {
        let p = dir.join(name);
        if p.is_file() {
            // SAFETY: as in `try_load`; these are cuDNN's own libraries from the same folder.
            if let Ok(lib) = unsafe { libloading::Library::new(&p) } {
                std::mem::forget(lib);
            }
        }
    }
}

/// Every file worth trying, in order; folders looked at are noted in `notes`.
fn candidate_files(notes: &mut Vec<String>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("CUDNN_PATH") {
        let root = PathBuf::from(v);
        dirs.extend([root.join("lib"), root.join("lib64"), root.clone()]);
    }
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            let root = PathBuf::from(v);
            dirs.extend([root.join("lib64"), root.join("lib")]);
        }
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/lib",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(python_cudnn_dirs());
    let mut seen = std::collections::BTreeSet::new();
    for d in dirs {
        if !seen.insert(d.clone()) {
            continue;
        }
        notes.push(d.display().to_string());
        files.push(d.join("libcudnn.so.9"));
        files.push(d.join("libcudnn.so"));
    }
    files
}

/// `site-packages/nvidia/cudnn/lib` folders: the usual Python roots first, then whatever
/// `python3` reports (a virtualenv or conda the process was not started from).
fn python_cudnn_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var) {
            roots.push(PathBuf::from(v).join("lib"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    for r in ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"] {
        roots.push(PathBuf::from(r));
    }
    let mut out = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for py in pythons {
            for sp in ["site-packages", "dist-packages"] {
                let d = py.join(sp).join("nvidia/cudnn/lib");
                if d.is_dir() {
                    out.push(d);
                }
            }
        }
    }
    if let Some(d) = python_reported_dir() {
        out.push(d);
    }
    out
}

/// Asks `python3` where the `nvidia.cudnn` package lives (its `lib/` folder), if python3 and the
/// package exist. Bounded: the interpreter only imports one namespace package.
fn python_reported_dir() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import nvidia.cudnn as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(s.trim());
    p.is_dir().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_string_splits_major_minor_patch() {
        let lib = CudnnLibrary {
            path: "x".into(),
            version: 91002,
            passed_over: String::new(),
        };
        assert_eq!(lib.version_string(), "9.10.2");
    }

    #[test]
    fn head_dims_reason_follows_the_version_and_the_architecture() {
        let lib = |version| CudnnLibrary {
            path: "x".into(),
            version,
            passed_over: String::new(),
        };
        // DeepSeek-V3's 192/128 on Hopper: the forward from 9.1, the backward from 9.5.
        assert!(lib(90000).head_dims_reason(9, 192, 128, false).is_some());
        assert!(lib(90100).head_dims_reason(9, 192, 128, false).is_none());
        let why = lib(90400).head_dims_reason(9, 192, 128, true).unwrap();
        assert!(why.contains("9.5.0") && why.contains("9.4.0"), "{why}");
        assert!(lib(90500).head_dims_reason(9, 192, 128, true).is_none());
        // 192/128 is exempt from the 9.11-9.13.0 backward bug; 256/128 is not.
        assert!(lib(91200).head_dims_reason(9, 192, 128, true).is_none());
        let why = lib(91200).head_dims_reason(9, 256, 128, true).unwrap();
        assert!(why.contains("9.13.1"), "{why}");
        assert!(lib(91200).head_dims_reason(9, 256, 128, false).is_none());
        assert!(lib(91301).head_dims_reason(9, 256, 128, true).is_none());
        // Small head dims and equal ones are untouched; other architectures are left to the
        // plan build.
        assert!(lib(90000).head_dims_reason(9, 96, 64, true).is_none());
        assert!(lib(91200).head_dims_reason(9, 256, 256, true).is_none());
        assert!(lib(90000).head_dims_reason(8, 192, 128, true).is_none());
        // Below the split-head-dims floor (not a library the probe accepts, but the rule holds).
        assert!(lib(80905).head_dims_reason(8, 96, 64, false).is_some());
        assert!(lib(80905).head_dims_reason(8, 64, 64, false).is_none());
    }

    #[test]
    fn versions_are_read_from_names_and_headers_without_loading() {
        assert_eq!(version_from_name("libcudnn.so.9.14.0"), Some(91400));
        assert_eq!(version_from_name("libcudnn.so.9.19.1"), Some(91901));
        assert_eq!(version_from_name("libcudnn.so.9"), None);
        assert_eq!(version_from_name("libcudnn.so"), None);
        assert_eq!(version_from_name("libcudnn_graph.so.9.14.0"), None);
        let header = "/* cudnn_version.h */\n#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 19\n\
                      #define CUDNN_PATCHLEVEL 0\n#define CUDNN_VERSION (CUDNN_MAJOR * 10000)\n";
        assert_eq!(version_from_header(header), Some(91900));
        assert_eq!(version_from_header("#define CUDNN_MAJOR 9\n"), None);

        // A wheel's layout (lib/libcudnn.so.9 beside include/cudnn_version.h), and a system
        // one (the versioned file behind the unversioned link), in a fresh folder.
        let root =
            std::env::temp_dir().join(format!("modelspec-cudnn-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("wheel/lib")).unwrap();
        std::fs::create_dir_all(root.join("wheel/include")).unwrap();
        std::fs::write(root.join("wheel/lib/libcudnn.so.9"), b"").unwrap();
        std::fs::write(root.join("wheel/include/cudnn_version_v9.h"), header).unwrap();
        assert_eq!(
            declared_version(&root.join("wheel/lib/libcudnn.so.9")),
            Some(91900)
        );
        std::fs::create_dir_all(root.join("sys")).unwrap();
        std::fs::write(root.join("sys/libcudnn.so.9.14.0"), b"").unwrap();
        std::os::unix::fs::symlink("libcudnn.so.9.14.0", root.join("sys/libcudnn.so.9")).unwrap();
        assert_eq!(
            declared_version(&root.join("sys/libcudnn.so.9")),
            Some(91400)
        );
        // A wheel without headers: the dist-info folder's name beside nvidia/.
        let lib = root.join("site-packages/nvidia/cudnn/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(root.join("site-packages/nvidia_cudnn_cu13-9.19.0.56.dist-info"))
            .unwrap();
        std::fs::write(lib.join("libcudnn.so.9"), b"").unwrap();
        assert_eq!(declared_version(&lib.join("libcudnn.so.9")), Some(91900));
        assert_eq!(
            version_from_dist_info("nvidia_cudnn_cu12-9.1.0.70.dist-info"),
            Some(90100)
        );
        assert_eq!(
            version_from_dist_info("nvidia_cublas_cu12-12.1.dist-info"),
            None
        );
        std::fs::write(root.join("sys/libcudnn.so"), b"").unwrap();
        assert_eq!(declared_version(&root.join("sys/libcudnn.so")), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn probe_never_panics_and_names_what_it_searched() {
        match probe() {
            Ok(lib) => {
                println!(
                    "cuDNN {} at {}; passed over: {}",
                    lib.version_string(),
                    lib.path,
                    lib.passed_over
                );
                assert!(lib.version >= MIN_VERSION);
                // The reported path is the file that was chosen: loading it again gives the
                // same version.
                assert!(Path::new(&lib.path).is_file(), "{}", lib.path);
                match try_load(std::ffi::OsStr::new(&lib.path)) {
                    Tried::Ok(_, v, _) => assert_eq!(v, lib.version, "{}", lib.path),
                    _ => panic!("{} does not load again", lib.path),
                }
                let _ = api();
            }
            Err(CudnnError::NotFound { searched }) => {
                // The default search names the usual folders; a forced file names itself.
                let place = if std::env::var_os("MODELSPEC_CUDNN_LIB").is_some() {
                    "MODELSPEC_CUDNN_LIB="
                } else {
                    "/usr/local/cuda/lib64"
                };
                assert!(searched.contains(place), "{searched}")
            }
            Err(CudnnError::TooOld { version, .. }) => assert!(version < MIN_VERSION),
            Err(e) => panic!("unexpected probe error: {e}"),
        }
    }
}
