//! The CUDA pooling kernels' arithmetic, checked on a machine without a GPU: the kernel
//! source (src/nn/pool/kernels.cu) compiled as plain C++ by the host's compiler, with one
//! block of one thread (each kernel's grid-stride loop then visits every element), run on
//! the cases of tests/nn_pool.rs and on tied values and NaN, against cnnc's CPU ops, bit
//! for bit: forward, the max pool's argmax, the gathered backward.
//!
//! What this cannot check is CUDA itself (launches, arguments, memory): tests/nn_cuda.rs
//! does that on a GPU (scripts/device-check.sh). Needs a C++ compiler (`c++`, or `CXX`);
//! without one it says so and passes, unless CI is set.
#![cfg(feature = "train")]

use candle_core::{DType, Device, Tensor};
use cnnc::ir::{pool_out_size, Pad};
use cnnc::nn::pool::{PoolDim, PoolMode, PoolSpec};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What stands in for CUDA: the qualifiers, the thread indices of a one-thread grid, the
/// bit casts. A `main` reads one case from stdin and writes the kernels' outputs to stdout.
const HARNESS: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
struct Idx { unsigned x, y, z; };
static const Idx blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
#include KERNELS
template <typename T> static std::vector<T> read(long long n) {
    std::vector<T> v(n);
    if (n && fread(v.data(), sizeof(T), n, stdin) != (size_t)n) { fprintf(stderr, "short input\n"); std::exit(2); }
    return v;
}
template <typename T, typename F0, typename F1, typename F2>
static void run(long long planes, Dim h, Dim w, int mode, int pad, F0 f, F1 a, F2 b) {
    long long ni = planes * h.input * w.input, no = planes * h.output * w.output;
    std::vector<T> x = read<T>(ni), g = read<T>(no), out(no), dx(ni);
    std::vector<int> arg(no);
    f(x.data(), out.data(), no, h, w, mode, pad);
    if (mode == 0) a(x.data(), arg.data(), no, h, w);
    b(g.data(), arg.data(), dx.data(), ni, h, w, mode, pad);
    fwrite(out.data(), sizeof(T), no, stdout);
    fwrite(arg.data(), sizeof(int), no, stdout);
    fwrite(dx.data(), sizeof(T), ni, stdout);
}
int main() {
    long long p[16];
    if (fread(p, sizeof(long long), 16, stdin) != 16) return 2;
    Dim h = {(int)p[2], (int)p[3], (int)p[4], (int)p[5], (int)p[6], (int)p[7]};
    Dim w = {(int)p[8], (int)p[9], (int)p[10], (int)p[11], (int)p[12], (int)p[13]};
    if (p[0] == 32) run<float>(p[1], h, w, (int)p[14], (int)p[15], pool_fwd_f32, pool_argmax_f32, pool_bwd_f32);
    else run<double>(p[1], h, w, (int)p[14], (int)p[15], pool_fwd_f64, pool_argmax_f64, pool_bwd_f64);
    return 0;
}
"#;

/// The harness compiled, or None where there is no C++ compiler (and CI is not set).
fn harness() -> Option<PathBuf> {
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/nn/pool/kernels.cu");
    let dir = std::env::temp_dir().join(format!("cnnc-pool-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("harness.cpp");
    std::fs::write(&src, HARNESS).unwrap();
    let exe = dir.join("harness");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = match Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Wno-unused-function"])
        .arg(format!("-DKERNELS=\"{}\"", kernels.display()))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: no C++ compiler `{cxx}` ({e}); set CXX to one");
            return None;
        }
        Err(e) => panic!("CI is set but the C++ compiler `{cxx}` cannot run: {e}"),
    };
    assert!(out.status.success(), "compiling the kernels as C++ failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(exe)
}

/// The host-run kernels' (forward, argmax, input gradient), as bits.
fn host_run(exe: &Path, s: &PoolSpec, planes: usize, dtype: DType, x: &[f64], g: &[f64]) -> (Vec<u64>, Vec<i32>, Vec<u64>) {
    let (mode, pad) = match s.mode {
        PoolMode::Max => (0, 0),
        PoolMode::Avg { count_include_pad } => (1, count_include_pad as i64),
    };
    let d = |d: &PoolDim| [d.input, d.output, d.kernel, d.stride, d.pad_begin, d.pad_end].map(|v| v as i64);
    let width = if dtype == DType::F32 { 32 } else { 64 };
    let mut params = vec![width, planes as i64];
    params.extend(d(&s.h));
    params.extend(d(&s.w));
    params.extend([mode, pad]);
    let mut input: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    for v in x.iter().chain(g) {
        if width == 32 {
            input.extend((*v as f32).to_le_bytes());
        } else {
            input.extend(v.to_le_bytes());
        }
    }
    let mut child = Command::new(exe).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the harness failed");
    let (no, ni) = (g.len(), x.len());
    let size = width as usize / 8;
    assert_eq!(out.stdout.len(), no * size + no * 4 + ni * size);
    let floats = |b: &[u8]| -> Vec<u64> {
        b.chunks(size)
            .map(|c| if size == 4 { u32::from_le_bytes(c.try_into().unwrap()) as u64 } else { u64::from_le_bytes(c.try_into().unwrap()) })
            .collect()
    };
    let z = floats(&out.stdout[..no * size]);
    let arg = out.stdout[no * size..no * size + no * 4].chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
    let dx = floats(&out.stdout[no * size + no * 4..]);
    (z, arg, dx)
}

fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t.to_vec1::<f32>().unwrap().into_iter().map(|v| v.to_bits() as u64).collect(),
        _ => t.to_vec1::<f64>().unwrap().into_iter().map(f64::to_bits).collect(),
    }
}

/// The kernels' bits equal the CPU's; else the first element that differs.
fn same(kernel: &[u64], cpu: &[u64], what: &str) {
    assert_eq!(kernel.len(), cpu.len(), "{what}: lengths");
    if let Some(i) = (0..cpu.len()).find(|&i| kernel[i] != cpu[i]) {
        panic!("{what}: element {i} of {}: kernels {:#x}, CPU {:#x}", cpu.len(), kernel[i], cpu[i]);
    }
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// (input, kernel, stride, pad begin, pad end, ceil) per axis, [h, w].
type Case = [(usize, usize, usize, usize, usize, bool); 2];

const CASES: &[Case] = &[
    [(7, 3, 2, 1, 1, false), (7, 3, 2, 1, 1, false)],
    [(8, 2, 3, 0, 0, false), (6, 2, 2, 0, 0, false)],
    [(5, 3, 1, 1, 0, false), (6, 2, 1, 0, 1, false)],
    [(6, 3, 2, 1, 1, true), (5, 2, 2, 0, 0, true)],
    [(4, 4, 1, 0, 0, false), (3, 3, 1, 0, 0, false)],
    [(9, 5, 2, 2, 2, true), (10, 4, 3, 1, 2, true)],
    [(12, 3, 2, 1, 1, false), (12, 3, 2, 1, 1, false)],
];

#[test]
fn cuda_kernels_run_on_the_host_match_the_cpu_ops_bit_for_bit() {
    let Some(exe) = harness() else { return };
    let mut rng = Lcg(3);
    let (batch, channels) = (2, 3);
    let mut checked = 0;
    for case in CASES {
        let dim = |&(input, kernel, stride, pb, pe, ceil): &(usize, usize, usize, usize, usize, bool)| {
            let o = pool_out_size(input as u64, kernel as u64, stride as u64, Pad { begin: pb as u64, end: pe as u64 }, ceil).unwrap();
            PoolDim { input, output: o as usize, kernel, stride, pad_begin: pb, pad_end: pe }
        };
        for mode in [PoolMode::Max, PoolMode::Avg { count_include_pad: true }, PoolMode::Avg { count_include_pad: false }] {
            let s = PoolSpec { mode, h: dim(&case[0]), w: dim(&case[1]) };
            s.check().unwrap();
            for dtype in [DType::F32, DType::F64] {
                let planes = batch * channels;
                // Coarse values: ties in most windows; one NaN for the max pool.
                let mut x: Vec<f64> = (0..planes * s.h.input * s.w.input).map(|_| (rng.next() * 6.0).round() / 4.0).collect();
                if mode == PoolMode::Max {
                    x[s.w.input + 1] = f64::NAN;
                }
                let g: Vec<f64> = (0..planes * s.h.output * s.w.output).map(|_| rng.next()).collect();
                let xt =
                    Tensor::from_vec(x.clone(), (batch, channels, s.h.input, s.w.input), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let gt =
                    Tensor::from_vec(g.clone(), (batch, channels, s.h.output, s.w.output), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let z = bits(&s.apply(&xt).unwrap());
                let dx = bits(&s.grad_input(&xt, &gt).unwrap());
                let (hz, harg, hdx) = host_run(&exe, &s, planes, dtype, &x, &g);
                same(&hz, &z, &format!("{case:?} {mode:?} {dtype:?}: forward"));
                same(&hdx, &dx, &format!("{case:?} {mode:?} {dtype:?}: backward"));
                if mode == PoolMode::Max {
                    // Every output found a maximum in its plane.
                    assert!(harg.iter().all(|&a| a >= 0 && (a as usize) < s.h.input * s.w.input), "{case:?}: argmax out of the plane");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, CASES.len() * 6);
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}
