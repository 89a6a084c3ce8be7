//! Matmul throughput at the shapes headroom's models run: candle's matmul (the `gemm` crate,
//! x86-v4 kernels; what every Linear uses) beside OpenBLAS, MKL and oneDNN (shared libraries from
//! their PyPI wheels, opened at run time; `tools/fetch-blas.sh` installs them into the cache) and
//! PyTorch's torch.matmul (tools/bench_matmul_torch.py, when tools/.venv has torch; its f32 is
//! MKL, its bf16 oneDNN's brgemm).
//!
//! Forms, W `[N, K]` row-major (nn.Linear layout):
//!   fwd  y  `[M, N]` = x `[M, K]` · Wᵀ   (Linear::forward)
//!   bwd  dx `[M, K]` = dy `[M, N]` · W   (Linear::backward)
//! f32, and bf16 inputs with f32 accumulation (and f32 output for the BLAS bf16 entry points;
//! candle's bf16 matmul returns bf16). 2·M·N·K FLOPs per product; best of the repetitions.
//! A '!' after a figure: that library's product disagreed with candle's f32 product of the same
//! inputs (beyond 1e-3 of its largest entry). oneDNN: one matmul primitive per shape, created before timing (plain strided layouts, W read
//! in place). Every library runs on 2 threads (OPENBLAS/MKL/OMP/torch set here, rayon: RAYON_NUM_THREADS or
//! all cores, which is 2 on the bench machine).
//! Env: HEADROOM_MATMUL_M (rows, "1024,4096"), HEADROOM_MATMUL_SECS (0.4: time per cell),
//! HEADROOM_BLAS_DIR (where fetch-blas.sh put the libraries; default <cache>/blas),
//! HEADROOM_BENCH_PYTHON, HEADROOM_OPENBLAS_CORETYPE (OpenBLAS's kernels, e.g. Haswell;
//! default: its own choice, SkylakeX on Zen 4, whatever OPENBLAS_CORETYPE says).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

const THREADS: usize = 2;
/// (K, N): OPT-125m's projections (768x768), FFN up (768 -> 3072) and down (3072 -> 768),
/// SmolLM2-135m's FFN (576 -> 1536), a 1B-class FFN (2048 -> 8192).
const KN: [(usize, usize); 5] = [(768, 768), (768, 3072), (3072, 768), (576, 1536), (2048, 8192)];

// CBLAS enums.
const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// cblas_sgemm (LP64: 32-bit ints).
type Sgemm = unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);
/// cblas_sbgemm (OpenBLAS) / cblas_gemm_bf16bf16f32 (MKL): bf16 A and B, f32 C.
type Bgemm = unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const u16, i32, *const u16, i32, f32, *mut f32, i32);

#[derive(Clone, Copy, PartialEq)]
enum Form {
    Fwd,
    Bwd,
}

/// One product: the form and M, K, N (W `[N, K]`).
#[derive(Clone, Copy)]
struct Cell {
    f: Form,
    m: usize,
    k: usize,
    n: usize,
}

struct Blas {
    name: &'static str,
    sgemm: Sgemm,
    bgemm: Option<Bgemm>,
    _libs: Vec<Library>,
}

impl Blas {
    /// C = A · op(B) row-major; fwd: A = x `[M, K]`, B = W `[N, K]` transposed, C `[M, N]`;
    /// bwd: A = dy `[M, N]`, B = W `[N, K]`, C `[M, K]`.
    fn run<T>(&self, cell: Cell, a: &[T], w: &[T], c: &mut [f32], g: unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const T, i32, *const T, i32, f32, *mut f32, i32)) {
        let (f, m, k, n) = (cell.f, cell.m as i32, cell.k as i32, cell.n as i32);
        // SAFETY: the slices hold M*K (or M*N), N*K and the output's elements, as the leading
        // dimensions say; the library only reads a and w and writes c.
        unsafe {
            match f {
                Form::Fwd => g(ROW_MAJOR, NO_TRANS, TRANS, m, n, k, 1.0, a.as_ptr(), k, w.as_ptr(), k, 0.0, c.as_mut_ptr(), n),
                Form::Bwd => g(ROW_MAJOR, NO_TRANS, NO_TRANS, m, k, n, 1.0, a.as_ptr(), n, w.as_ptr(), k, 0.0, c.as_mut_ptr(), k),
            }
        }
    }
}

fn sym<T: Copy>(lib: &Library, names: &[&str]) -> Option<T> {
    // SAFETY: the types above are the CBLAS prototypes of these symbols.
    names.iter().find_map(|n| unsafe { lib.get::<T>(n.as_bytes()).ok().map(|s| *s) })
}

fn open(path: &Path) -> Option<Library> {
    // SAFETY: loading a BLAS runs its initialisers (thread pools), nothing else.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("({}: {e}; run tools/fetch-blas.sh)", path.display());
            None
        }
    }
}

fn blas_dir() -> PathBuf {
    std::env::var_os("HEADROOM_BLAS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| headroom::assets::cache_dir().map(|c| c.join("blas")).unwrap_or_else(|_| PathBuf::from("blas")))
}

fn openblas(dir: &Path) -> Option<Blas> {
    let lib = open(&dir.join("openblas/libscipy_openblas.so"))?;
    let set: Option<unsafe extern "C" fn(i32)> = sym(&lib, &["scipy_openblas_set_num_threads", "openblas_set_num_threads"]);
    // SAFETY: set_num_threads(int).
    unsafe { set?(THREADS as i32) };
    let config: Option<unsafe extern "C" fn() -> *const std::ffi::c_char> = sym(&lib, &["scipy_openblas_get_config", "openblas_get_config"]);
    if let Some(c) = config {
        // SAFETY: a static NUL-terminated string.
        eprintln!("(openblas: {})", unsafe { std::ffi::CStr::from_ptr(c()) }.to_string_lossy());
    }
    let sgemm = sym(&lib, &["scipy_cblas_sgemm", "cblas_sgemm"])?;
    let bgemm = sym(&lib, &["scipy_cblas_sbgemm", "cblas_sbgemm"]);
    if bgemm.is_none() {
        eprintln!("(openblas: this build has no cblas_sbgemm (built without BUILD_BFLOAT16): bf16 column empty)");
    }
    Some(Blas { name: "openblas", sgemm, bgemm, _libs: vec![lib] })
}

fn mkl(dir: &Path) -> Option<Blas> {
    // MKL's default (Intel) threading layer needs libiomp5, loaded first and global.
    let omp = open(&dir.join("mkl/libiomp5.so"))?;
    let lib = open(&dir.join("mkl/libmkl_rt.so.2"))?;
    let set: Option<unsafe extern "C" fn(i32)> = sym(&lib, &["MKL_Set_Num_Threads"]);
    // SAFETY: MKL_Set_Num_Threads(int).
    unsafe { set?(THREADS as i32) };
    let sgemm = sym(&lib, &["cblas_sgemm"])?;
    let bgemm = sym(&lib, &["cblas_gemm_bf16bf16f32"]);
    Some(Blas { name: "mkl", sgemm, bgemm, _libs: vec![omp, lib] })
}

/// Best seconds per call of `f` over repetitions lasting about `secs` (at least 3).
fn best(secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let (mut best, start) = (f64::INFINITY, Instant::now());
    let mut reps = 0;
    while reps < 3 || start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    best
}

fn candle(f: Form, a: &Tensor, w: &Tensor) -> Tensor {
    match f {
        Form::Fwd => a.matmul(&w.t().expect("t")).expect("matmul"),
        Form::Bwd => a.matmul(w).expect("matmul"),
    }
}

/// max |got - want| <= 1e-3 max |want|: f32 accumulation in another order (K <= 3072) stays
/// orders of magnitude below this; a wrong transpose or stride does not.
fn close(got: &[f32], want: &[f32]) -> bool {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-3 * scale)
}

/// A table cell: GFLOP/s, '-' when the library has no such entry point, '!' after a figure
/// whose product disagreed with the reference.
fn cell_text(g: Option<f64>, wrong: bool) -> String {
    match g {
        Some(g) => format!(" {:>9}", format!("{g:.1}{}", if wrong { "!" } else { "" })),
        None => format!(" {:>9}", "-"),
    }
}

/// PyTorch: seconds per cell keyed "form dtype m k n", from tools/bench_matmul_torch.py.
fn torch(ms: &[usize], secs: f64) -> Option<serde_json::Value> {
    let py = common::python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_matmul_torch.py");
    let shapes: Vec<String> = ms.iter().flat_map(|m| KN.iter().map(move |(k, n)| format!("{m}x{k}x{n}"))).collect();
    let out = Command::new(py).arg(script).args(["--threads", &THREADS.to_string(), "--secs", &secs.to_string(), "--shapes", &shapes.join(",")]).output().ok()?;
    if !out.status.success() {
        eprintln!("pytorch matmul failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    serde_json::from_slice(out.stdout.trim_ascii()).ok()
}

fn main() {
    // Before any library starts its pool.
    std::env::set_var("OPENBLAS_NUM_THREADS", THREADS.to_string());
    std::env::set_var("MKL_NUM_THREADS", THREADS.to_string());
    std::env::set_var("OMP_NUM_THREADS", THREADS.to_string());
    // OpenBLAS reads OPENBLAS_CORETYPE from the environment the process started with (a
    // set_var here does not reach it). Left unset it picks SkylakeX (AVX-512) on Zen 4; an
    // inherited value (this machine's environment sets Haswell: AVX2, ~0.6x) would make the
    // column the wrong kernels, so the bench runs itself again with the core it is told by
    // HEADROOM_OPENBLAS_CORETYPE, or none.
    let want_core = std::env::var_os("HEADROOM_OPENBLAS_CORETYPE");
    if std::env::var_os("OPENBLAS_CORETYPE") != want_core {
        let me = std::env::current_exe().expect("the bench's own path");
        let mut cmd = Command::new(me);
        cmd.args(std::env::args_os().skip(1));
        match &want_core {
            Some(c) => cmd.env("OPENBLAS_CORETYPE", c),
            None => cmd.env_remove("OPENBLAS_CORETYPE"),
        };
        let status = cmd.status().expect("rerun the bench");
        std::process::exit(status.code().unwrap_or(1));
    }
    let ms: Vec<usize> = std::env::var("HEADROOM_MATMUL_M").unwrap_or_else(|_| "1024,4096".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let secs = std::env::var("HEADROOM_MATMUL_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0.4);
    let dir = blas_dir();
    let libs: Vec<Blas> = [openblas(&dir), mkl(&dir)].into_iter().flatten().collect();
    let dnnl = Dnnl::load(&dir);
    let torch = torch(&ms, secs);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("matmul GFLOP/s, best of repetitions ~{secs}s a cell, {THREADS} threads (rayon pool: {}), load average at start: {}", common::threads(), load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!("fwd: x[M,K]·Wᵀ, bwd: dy[M,N]·W, W [N,K] row-major; bf16 = bf16 inputs, f32 accumulation");
    let mut header = format!("{:<5} {:<4} {:>5} {:>5} {:>5} {:>9}", "dtype", "form", "M", "K", "N", "candle");
    for l in &libs {
        header += &format!(" {:>9}", l.name);
    }
    if dnnl.is_some() {
        header += &format!(" {:>9}", "onednn");
    }
    header += &format!(" {:>9} {:>8}", "pytorch", "best/cdl");
    println!("{header}");
    let dev = Device::Cpu;
    for dt in [DType::F32, DType::BF16] {
        for &m in &ms {
            for &(k, n) in &KN {
                let w = Tensor::randn(0f32, 0.02, (n, k), &dev).expect("w");
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).expect("x");
                let dy = Tensor::randn(0f32, 1.0, (m, n), &dev).expect("dy");
                let (w, x, dy) = (w.to_dtype(dt).expect("dt"), x.to_dtype(dt).expect("dt"), dy.to_dtype(dt).expect("dt"));
                let flops = 2.0 * (m * n * k) as f64;
                for f in [Form::Fwd, Form::Bwd] {
                    let a = if f == Form::Fwd { &x } else { &dy };
                    let cell = Cell { f, m, k, n };
                    let cdl = flops / best(secs, || drop(candle(f, a, &w))) / 1e9;
                    let mut row = format!("{:<5} {:<4} {m:>5} {k:>5} {n:>5} {cdl:>9.1}", if dt == DType::F32 { "f32" } else { "bf16" }, if f == Form::Fwd { "fwd" } else { "bwd" });
                    let mut top = cdl;
                    let mut c = vec![0f32; m * n.max(k)];
                    // The reference for every library: candle in f32 on the same (for bf16:
                    // bf16-rounded) inputs, so a wrong transpose or stride shows as a '!'.
                    let to32 = |t: &Tensor| t.to_dtype(DType::F32).expect("f32");
                    let want = candle(f, &to32(a), &to32(&w)).flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("want");
                    for l in &libs {
                        let g = match dt {
                            DType::F32 => {
                                let (av, wv) = (a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a"), w.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("w"));
                                Some(flops / best(secs, || l.run(cell, &av, &wv, &mut c, l.sgemm)) / 1e9)
                            }
                            _ => l.bgemm.map(|bg| {
                                let bits = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<bf16>()).expect("bf16").iter().map(|v| v.to_bits()).collect::<Vec<u16>>();
                                let (av, wv) = (bits(a), bits(&w));
                                flops / best(secs, || l.run(cell, &av, &wv, &mut c, bg)) / 1e9
                            }),
                        };
                        top = top.max(g.unwrap_or(0.0));
                        row += &cell_text(g, g.is_some() && !close(&c[..want.len()], &want));
                    }
                    if let Some(d) = &dnnl {
                        let r = d.time(cell, a, &w, secs);
                        let g = r.as_ref().map(|(s, _)| flops / s / 1e9);
                        top = top.max(g.unwrap_or(0.0));
                        row += &cell_text(g, r.is_some_and(|(_, got)| !close(&got, &want)));
                    }
                    let key = format!("{} {} {m} {k} {n}", if f == Form::Fwd { "fwd" } else { "bwd" }, if dt == DType::F32 { "f32" } else { "bf16" });
                    let tg = torch.as_ref().and_then(|t| t[&key].as_f64()).map(|s| flops / s / 1e9);
                    top = top.max(tg.unwrap_or(0.0));
                    row += &tg.map_or(format!(" {:>9}", "-"), |g| format!(" {g:>9.1}"));
                    println!("{row} {:>7.2}x", top / cdl);
                }
            }
        }
    }
}

/// oneDNN's C API (v3), the few calls a matmul needs. Handles are opaque pointers.
type H = *mut std::ffi::c_void;
#[repr(C)]
struct ExecArg {
    arg: i32,
    memory: H,
}
const DNNL_CPU: i32 = 1;
const DNNL_IN_ORDER: u32 = 1;
const DNNL_BF16: i32 = 2;
const DNNL_F32: i32 = 3;
const ARG_SRC: i32 = 1;
const ARG_DST: i32 = 17;
const ARG_WEIGHTS: i32 = 33;

struct Dnnl {
    _lib: Library,
    engine: H,
    stream: H,
    md: unsafe extern "C" fn(*mut H, i32, *const i64, i32, *const i64) -> i32,
    pd: unsafe extern "C" fn(*mut H, H, H, H, H, H, H) -> i32,
    prim: unsafe extern "C" fn(*mut H, H) -> i32,
    mem: unsafe extern "C" fn(*mut H, H, H, *mut std::ffi::c_void) -> i32,
    exec: unsafe extern "C" fn(H, H, i32, *const ExecArg) -> i32,
    wait: unsafe extern "C" fn(H) -> i32,
}

impl Dnnl {
    fn load(dir: &Path) -> Option<Self> {
        let lib = open(&dir.join("onednn/libdnnl.so.3"))?;
        let engine_create: unsafe extern "C" fn(*mut H, i32, usize) -> i32 = sym(&lib, &["dnnl_engine_create"])?;
        let stream_create: unsafe extern "C" fn(*mut H, H, u32) -> i32 = sym(&lib, &["dnnl_stream_create"])?;
        let (mut engine, mut stream): (H, H) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: out-pointers to handles; 0 = dnnl_success.
        unsafe {
            if engine_create(&mut engine, DNNL_CPU, 0) != 0 || stream_create(&mut stream, engine, DNNL_IN_ORDER) != 0 {
                eprintln!("(onednn: cannot create a CPU engine/stream)");
                return None;
            }
        }
        Some(Self {
            engine,
            stream,
            md: sym(&lib, &["dnnl_memory_desc_create_with_strides"])?,
            pd: sym(&lib, &["dnnl_matmul_primitive_desc_create"])?,
            prim: sym(&lib, &["dnnl_primitive_create"])?,
            mem: sym(&lib, &["dnnl_memory_create"])?,
            exec: sym(&lib, &["dnnl_primitive_execute"])?,
            wait: sym(&lib, &["dnnl_stream_wait"])?,
            _lib: lib,
        })
    }

    /// Best seconds per call: src a `[M, K]` (fwd) or `[M, N]` (bwd), weights W `[N, K]` read
    /// through strides (fwd: Wᵀ as `[K, N]` with strides (1, K)), f32 dst. The primitive and
    /// memory objects are made once (leaked: a bench process).
    /// Returns (seconds, the product as f32 for the check).
    fn time(&self, cell: Cell, a: &Tensor, w: &Tensor, secs: f64) -> Option<(f64, Vec<f32>)> {
        let Cell { f, m, k, n } = cell;
        let dt = if a.dtype() == DType::BF16 { DNNL_BF16 } else { DNNL_F32 };
        let (k_in, n_out) = if f == Form::Fwd { (k, n) } else { (n, k) };
        let (a_dims, a_str) = ([m as i64, k_in as i64], [k_in as i64, 1]);
        let (w_dims, w_str) = match f {
            Form::Fwd => ([k as i64, n as i64], [1, k as i64]),
            Form::Bwd => ([n as i64, k as i64], [k as i64, 1]),
        };
        let (c_dims, c_str) = ([m as i64, n_out as i64], [n_out as i64, 1]);
        let bytes = |t: &Tensor| -> Vec<u8> {
            match t.dtype() {
                DType::BF16 => t.flatten_all().and_then(|t| t.to_vec1::<bf16>()).expect("bf16").iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32").iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        };
        let (mut av, mut wv, mut cv) = (bytes(a), bytes(w), vec![0u8; m * n_out * 4]);
        let null = std::ptr::null_mut();
        let (mut amd, mut wmd, mut cmd, mut pd, mut prim): (H, H, H, H, H) = (null, null, null, null, null);
        let (mut am, mut wm, mut cm): (H, H, H) = (null, null, null);
        // SAFETY: dims/strides arrays of 2; the buffers outlive every execute below (waited on).
        unsafe {
            let ok = (self.md)(&mut amd, 2, a_dims.as_ptr(), dt, a_str.as_ptr()) == 0
                && (self.md)(&mut wmd, 2, w_dims.as_ptr(), dt, w_str.as_ptr()) == 0
                && (self.md)(&mut cmd, 2, c_dims.as_ptr(), DNNL_F32, c_str.as_ptr()) == 0
                && (self.pd)(&mut pd, self.engine, amd, wmd, null, cmd, null) == 0
                && (self.prim)(&mut prim, pd) == 0
                && (self.mem)(&mut am, amd, self.engine, av.as_mut_ptr().cast()) == 0
                && (self.mem)(&mut wm, wmd, self.engine, wv.as_mut_ptr().cast()) == 0
                && (self.mem)(&mut cm, cmd, self.engine, cv.as_mut_ptr().cast()) == 0;
            if !ok {
                eprintln!("(onednn: no matmul for {m}x{k}x{n})");
                return None;
            }
            let args = [ExecArg { arg: ARG_SRC, memory: am }, ExecArg { arg: ARG_WEIGHTS, memory: wm }, ExecArg { arg: ARG_DST, memory: cm }];
            let t = best(secs, || {
                (self.exec)(prim, self.stream, 3, args.as_ptr());
                (self.wait)(self.stream);
            });
            Some((t, cv.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
        }
    }
}
