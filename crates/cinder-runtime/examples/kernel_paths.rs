//! The int8 GEMM on every path this CPU has, side by side (alternating, medians, 1
//! thread), on the reference ConvNet's GEMM shapes; the depthwise convolution likewise on
//! the depthwise layers of `mobilenetv2-tiny` (one image); then the convolutions' sums of
//! one image by im2col + GEMM and by Winograd (and by the direct kernel), and the
//! whole ConvNet (W8A8 static per-channel, 2 threads, batch 1 and 64, against Winograd
//! forced and against 4-bit weights) with its per-stage profile, on the process's path
//! (`CINDER_ISA` caps it: run once per path to compare).
//!
//! `cargo run --profile bench -p cinder-runtime --example kernel_paths [peak|gemm|depthwise|conv|model]`
//! (`peak`: the `vpdpbusd` throughput of one core, on AVX-512 VNNI CPUs)
//!
//! On a shared machine, `KERNEL_PATHS_CLOCK=cpu` times by the process's CPU time instead
//! of wall time, and `KERNEL_PATHS_THREADS=1` runs the ConvNet on one thread, so that
//! its CPU time is the work itself (two threads' CPU time counts their waiting too).

use std::hint::black_box;
use std::time::Instant;

use cinder_runtime::kernels::{
    DepthwiseFilter, DirectFilter, Isa, MAX_DIRECT_CHANNELS, NhwcWindow, OutputStage, PackedMatrix,
    PackedNibbles, WINOGRAD_POSITIONS, WinogradFilter, WinogradGeometry, depthwise_nhwc_s8,
    direct_conv_nhwc_s8, gemm_s8, gemv_s4, im2col_nhwc_s8, max_pool2x2_s32, requantize_s8_rows,
    winograd_input_tiles, winograd_multiply, winograd_output_tiles, winograd_products_stride,
};
use cinder_runtime::synthetic::{Rng, minmax_table, random_input, reference_convnet};
use cinder_runtime::{ConvAlgorithm, QuantConfig, Session, SessionOptions, convert};
use cinder_tensor::RequantMultiplier;
use cinder_tensor::Tensor;

/// Seconds of CPU time this process's threads have run (`clock_gettime` with
/// `CLOCK_PROCESS_CPUTIME_ID`, Linux), else `None`: on a shared machine a
/// single-threaded run's CPU time moves far less with the load than its wall time.
fn cpu_seconds() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        unsafe extern "C" {
            fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
        }
        const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
        let mut t = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `t` is a valid `struct timespec` (two 64-bit fields on 64-bit Linux).
        let ok = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0;
        ok.then_some(t.sec as f64 + t.nsec as f64 * 1e-9)
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    None
}

/// Whether [`alternate`] measures CPU time (`KERNEL_PATHS_CLOCK=cpu`) instead of wall time.
fn cpu_clock() -> bool {
    std::env::var("KERNEL_PATHS_CLOCK").is_ok_and(|v| v == "cpu") && cpu_seconds().is_some()
}

/// Median seconds of `rounds` runs of each of `runs`, alternating: wall time, or CPU
/// time of the whole process with `KERNEL_PATHS_CLOCK=cpu`.
fn alternate(rounds: usize, runs: &mut [Box<dyn FnMut() + '_>]) -> Vec<f64> {
    let cpu = cpu_clock();
    let now = || {
        if cpu {
            cpu_seconds().unwrap_or(0.0)
        } else {
            START.with(|s| s.elapsed().as_secs_f64())
        }
    };
    let mut times = vec![Vec::with_capacity(rounds); runs.len()];
    for _ in 0..rounds {
        for (run, t) in runs.iter_mut().zip(&mut times) {
            let start = now();
            run();
            t.push(now() - start);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

thread_local! {
    static START: Instant = Instant::now();
}

fn codes(rng: &mut Rng, len: usize) -> Vec<i8> {
    (0..len).map(|_| rng.uniform(-127.0, 127.0) as i8).collect()
}

/// `vpdpbusd` multiply-adds per second of one core: 16 independent accumulator chains of
/// zmm (and of ymm) instructions, the ceiling every int8 kernel on this path is held to.
#[cfg(target_arch = "x86_64")]
fn peak() {
    use std::arch::x86_64::*;

    /// `iters` rounds of 16 zmm `vpdpbusd`; returns the accumulators' sum.
    #[target_feature(enable = "avx512f,avx512vnni")]
    fn zmm_chains(iters: usize) -> i32 {
        let (a, b) = (
            black_box(_mm512_set1_epi8(1)),
            black_box(_mm512_set1_epi8(1)),
        );
        let mut acc = [_mm512_setzero_si512(); 16];
        for _ in 0..iters {
            for v in &mut acc {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_epi32(v)).sum()
    }

    /// `iters` rounds of 16 ymm `vpdpbusd`; returns the accumulators' lane-0 sum.
    #[target_feature(enable = "avx512f,avx512vnni,avx512vl")]
    fn ymm_chains(iters: usize) -> i32 {
        let (a, b) = (
            black_box(_mm256_set1_epi8(1)),
            black_box(_mm256_set1_epi8(1)),
        );
        let mut acc = [_mm256_setzero_si256(); 16];
        for _ in 0..iters {
            for v in &mut acc {
                *v = _mm256_dpbusd_epi32(*v, a, b);
            }
        }
        acc.iter().map(|v| _mm256_extract_epi32::<0>(*v)).sum()
    }

    let has = std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vl");
    if !has {
        println!("vpdpbusd: this CPU has no AVX-512 VNNI");
        return;
    }
    let iters = 20_000_000;
    for (name, lanes) in [("zmm", 64.0), ("ymm", 32.0)] {
        let start = Instant::now();
        // SAFETY: the features were detected above.
        black_box(unsafe {
            match name {
                "zmm" => zmm_chains(iters),
                _ => ymm_chains(iters),
            }
        });
        let seconds = start.elapsed().as_secs_f64();
        let macs = (iters * 16) as f64 * lanes;
        println!(
            "vpdpbusd {name}, 1 thread: {:.0} G multiply-adds/s",
            macs / seconds / 1e9
        );
    }
}

fn gemms() {
    let paths: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&isa| isa >= Isa::Avx2 && isa.supported())
        .collect();
    let mut rng = Rng::new(1);
    println!("int8 GEMM, 1 thread, GOPS (2mnk / median time), alternating:");
    for (name, m, k, n) in [
        ("conv1 b64", 64 * 1024, 27, 64),
        ("conv2 b64", 64 * 256, 576, 128),
        ("fc1 b64", 64, 8192, 1024),
        ("fc1 b1", 1, 8192, 1024),
    ] {
        let (a, b) = (codes(&mut rng, m * k), codes(&mut rng, n * k));
        let packed: Vec<PackedMatrix> = paths
            .iter()
            .map(|&isa| PackedMatrix::pack_for(isa, &b, n, k).expect("valid"))
            .collect();
        let a = &a;
        let mut outs = vec![vec![0i32; m * n]; paths.len()];
        let mut runs: Vec<Box<dyn FnMut()>> = packed
            .iter()
            .zip(&mut outs)
            .map(|(p, c)| {
                Box::new(move || {
                    gemm_s8(black_box(a), k, m, p, c, n);
                }) as Box<dyn FnMut()>
            })
            .collect();
        let rounds = if m == 1 { 400 } else { 15 };
        let medians = alternate(rounds, &mut runs);
        let ops = (2 * m * n * k) as f64;
        let row: Vec<String> = paths
            .iter()
            .zip(&medians)
            .map(|(isa, t)| format!("{isa} {:.1}", ops / t / 1e9))
            .collect();
        let bytes = if m == 1 {
            format!(
                "  (weights {:.1} GB/s on the fastest)",
                (n * k) as f64 / medians.iter().copied().fold(f64::MAX, f64::min) / 1e9
            )
        } else {
            String::new()
        };
        println!("  {name:<10} {}{bytes}", row.join(" | "));
    }
    nibble_gemv(&mut rng);
}

/// fc1 at batch 1 with codes in [-8, 7], on every VNNI path the CPU has: the int8 GEMM on
/// those codes against the 4-bit GEMV on their nibbles, alternating.
fn nibble_gemv(rng: &mut Rng) {
    let (k, n) = (8192, 1024);
    let a = codes(rng, k);
    let b: Vec<i8> = (0..n * k).map(|_| rng.uniform(-8.0, 7.0) as i8).collect();
    let a_sum: i32 = a.iter().map(|&v| i32::from(v)).sum();
    let paths: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&isa| isa >= Isa::AvxVnni && isa.supported())
        .collect();
    let mut runs: Vec<Box<dyn FnMut()>> = Vec::new();
    for &isa in &paths {
        let int8 = PackedMatrix::pack_for(isa, &b, n, k).expect("valid");
        let nibbles = PackedNibbles::pack_for(isa, &b, n, k)
            .expect("valid")
            .expect("4-bit codes");
        let (a, mut c8, mut c4) = (a.clone(), vec![0i32; n], vec![0i32; n]);
        let a4 = a.clone();
        runs.push(Box::new(move || {
            gemm_s8(black_box(&a), k, 1, &int8, &mut c8, n);
        }));
        runs.push(Box::new(move || {
            gemv_s4(black_box(&a4), a_sum, &nibbles, 0..n, &mut c4);
        }));
    }
    let medians = alternate(400, &mut runs);
    let row: Vec<String> = paths
        .iter()
        .zip(medians.chunks_exact(2))
        .map(|(isa, t)| format!("{isa} int8 {:.1} µs, w4 {:.1} µs", t[0] * 1e6, t[1] * 1e6))
        .collect();
    println!("  fc1 b1, 4-bit codes: {}", row.join(" | "));
}

/// The 3×3 depthwise layers of `mobilenetv2-tiny` on a 32×32 input: (input side,
/// channels, stride).
const MOBILENET_DEPTHWISE: [(usize, usize, usize); 7] = [
    (32, 16, 1),
    (32, 64, 2),
    (16, 96, 1),
    (16, 96, 2),
    (8, 128, 1),
    (8, 128, 2),
    (4, 256, 1),
];

fn depthwise() {
    let paths: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&isa| isa.supported())
        .collect();
    let mut rng = Rng::new(3);
    println!(
        "int8 depthwise 3x3 sums, one image, 1 thread, GOPS (2 x MACs / median time), alternating:"
    );
    for (side, c, stride) in MOBILENET_DEPTHWISE {
        let shape = NhwcWindow {
            input: [side, side, c],
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [1, 1],
        };
        let [oh, ow] = shape.output();
        let (image, codes) = (codes(&mut rng, side * side * c), codes(&mut rng, 9 * c));
        let zero_points = vec![0; c];
        let filters: Vec<DepthwiseFilter> = paths
            .iter()
            .map(|&isa| DepthwiseFilter::pack_for(isa, &codes, &zero_points, c, 9).expect("valid"))
            .collect();
        let image = &image;
        let mut outs = vec![vec![0i32; oh * ow * c]; paths.len()];
        let mut runs: Vec<Box<dyn FnMut()>> = filters
            .iter()
            .zip(&mut outs)
            .map(|(f, out)| {
                Box::new(move || {
                    depthwise_nhwc_s8(black_box(image), &shape, 3, f, 0..oh, out);
                }) as Box<dyn FnMut()>
            })
            .collect();
        let medians = alternate(2000, &mut runs);
        let ops = (2 * oh * ow * c * 9) as f64;
        let row: Vec<String> = paths
            .iter()
            .zip(&medians)
            .map(|(isa, t)| format!("{isa} {:.1}", ops / t / 1e9))
            .collect();
        let name = format!("{side}x{side}x{c} s{stride}");
        println!("  {name:<14} {}", row.join(" | "));
    }
}

fn convs() {
    let mut rng = Rng::new(2);
    println!("one image's conv sums, 1 thread, path {}:", Isa::detect());
    for (name, h, c, n) in [("conv1", 32, 3, 64), ("conv2", 16, 64, 128)] {
        let k = 9 * c;
        let (input, weights) = (codes(&mut rng, h * h * c), codes(&mut rng, n * k));
        let packed = PackedMatrix::pack(&weights, n, k).expect("valid");
        let filter = WinogradFilter::pack(&weights, &vec![0; n], n, c).expect("valid");
        let g = WinogradGeometry::new(h, h, c, 1).expect("fits");
        let rows = (24 / g.tiles_per_row()).max(1);
        let tiles = g.tiles(0..rows);
        let (mut cols, mut sums) = (vec![0i8; h * h * k], vec![0i32; h * h * n]);
        let mut sums2 = sums.clone();
        let mut u = vec![0i16; WINOGRAD_POSITIONS * tiles * g.depth_stride()];
        let mut mm = vec![0i32; tiles * winograd_products_stride(n)];
        let mut runs: Vec<Box<dyn FnMut()>> = vec![
            Box::new(|| {
                im2col_nhwc_s8(black_box(&input), h, h, c, 3, 1, 1, 0, &mut cols, k);
                gemm_s8(&cols, k, h * h, &packed, &mut sums, n);
            }),
            Box::new(|| {
                for ty in (0..g.tile_rows()).step_by(rows) {
                    let block = ty..g.tile_rows().min(ty + rows);
                    let t = g.tiles(block.clone());
                    winograd_input_tiles(black_box(&input), &g, 0, block.clone(), &mut u);
                    winograd_multiply(&u, t, &filter, &mut mm);
                    let px = g.pixels(block.clone());
                    winograd_output_tiles(&mm, &g, n, block, &mut sums2[px.start * n..px.end * n]);
                }
            }),
        ];
        let med = alternate(200, &mut runs);
        println!(
            "  {name}: im2col + GEMM {:.1} us, Winograd {:.1} us",
            med[0] * 1e6,
            med[1] * 1e6
        );
        drop(runs);
        conv_parts(h, c, n, &input, &packed);
        direct_against_im2col(&mut rng, [h, c, n], true);
        if c <= MAX_DIRECT_CHANNELS {
            // ResNet-20's stem: no pool, 16 outputs.
            direct_against_im2col(&mut rng, [h, c, 16], false);
        }
    }
}

/// One image's sums of a 3×3 convolution (`h × h × c` -> `n`, pooled 2×2 when
/// `pool`) by the direct kernel and by im2col + GEMM (+ the pool of the sums), µs,
/// alternating.
fn direct_against_im2col(rng: &mut Rng, [h, c, n]: [usize; 3], pool: bool) {
    let k = 9 * c;
    let (input, weights) = (codes(rng, h * h * c), codes(rng, n * k));
    let packed = PackedMatrix::pack(&weights, n, k).expect("valid");
    let window = NhwcWindow {
        input: [h, h, c],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
    };
    let filter = DirectFilter::pack_for(Isa::detect(), &weights, n, window, 0).expect("valid");
    let (mut cols, mut sums) = (vec![0i8; h * h * k], vec![0i32; h * h * n]);
    let (mut pooled, mut direct) = (vec![0i32; h * h * n / 4], vec![0i32; h * h * n]);
    let mut padded = Vec::new();
    let mut ran = Isa::Generic;
    let input = &input;
    let med = alternate(
        200,
        &mut [
            Box::new(|| {
                im2col_nhwc_s8(black_box(input), h, h, c, 3, 1, 1, 0, &mut cols, k);
                gemm_s8(&cols, k, h * h, &packed, &mut sums, n);
                if pool {
                    max_pool2x2_s32(&sums, h, h, n, &mut pooled);
                }
            }),
            Box::new(|| {
                ran = direct_conv_nhwc_s8(
                    &filter,
                    black_box(input),
                    0..h,
                    pool,
                    &mut padded,
                    &mut direct,
                );
            }),
        ],
    );
    let what = if pool { "pooled sums" } else { "sums" };
    println!(
        "    {h}x{h}x{c} -> {n} {what}: im2col + GEMM{} {:.1} us, direct kernel ({ran}) {:.1} us",
        if pool { " + pool" } else { "" },
        med[0] * 1e6,
        med[1] * 1e6
    );
}

/// One image's im2col, GEMM, fused 2×2 max-pool of the sums and output stage, each
/// timed alone (µs, alternating).
fn conv_parts(h: usize, c: usize, n: usize, input: &[i8], packed: &PackedMatrix) {
    let k = 9 * c;
    let (mut cols, mut sums) = (vec![0i8; h * h * k], vec![0i32; h * h * n]);
    im2col_nhwc_s8(input, h, h, c, 3, 1, 1, 0, &mut cols, k);
    let mut pooled = vec![0i32; h * h * n / 4];
    let mut out = vec![0i8; h * h * n / 4];
    let bias = vec![1000; n];
    let mult = [RequantMultiplier::from_real(0.0007).expect("valid")];
    let stage = OutputStage {
        bias: &bias,
        mult: &mult,
        zp_out: -128,
        lo: -128,
        hi: 127,
    };
    let mut cols2 = cols.clone();
    let sums_in = sums.clone();
    let pooled_in = pooled.clone();
    let med = alternate(
        200,
        &mut [
            Box::new(|| im2col_nhwc_s8(black_box(input), h, h, c, 3, 1, 1, 0, &mut cols2, k)),
            Box::new(|| {
                gemm_s8(black_box(&cols), k, h * h, packed, &mut sums, n);
            }),
            Box::new(|| max_pool2x2_s32(black_box(&sums_in), h, h, n, &mut pooled)),
            Box::new(|| {
                requantize_s8_rows(&stage, black_box(&pooled_in), n, h * h / 4, &mut out, n)
            }),
        ],
    );
    println!(
        "    im2col {:.1} us, GEMM {:.1} us, 2x2 pool of the sums {:.1} us, output stage {:.1} us",
        med[0] * 1e6,
        med[1] * 1e6,
        med[2] * 1e6,
        med[3] * 1e6
    );
}

fn model() {
    let graph = reference_convnet(1);
    let table = minmax_table(&graph, &random_input(&graph, 16, 2)).expect("finite");
    let model = convert(&graph, &table, &QuantConfig::default()).expect("conversion");
    let forced = convert(&graph, &table, &QuantConfig::default())
        .expect("conversion")
        .with_conv_algorithm(ConvAlgorithm::Winograd)
        .expect("plan");
    let mut w4_config = QuantConfig::default();
    w4_config.default.weight_bits = 4;
    let w4 = convert(&graph, &table, &w4_config).expect("conversion");
    let threads = std::env::var("KERNEL_PATHS_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let options = SessionOptions { threads };
    let mut session = model.session_with(options).expect("pool");
    let mut winograd = forced.session_with(options).expect("pool");
    let mut w4 = w4.session_with(options).expect("pool");
    for batch in [1, 64] {
        let x = random_input(&graph, batch, 3);
        let rounds = if batch == 1 { 400 } else { 30 };
        let med = {
            let run = |s: &mut Session<'_>| {
                black_box(s.run(&x).expect("valid").data()[0]);
            };
            for s in [&mut session, &mut winograd, &mut w4] {
                run(s);
            }
            alternate(
                rounds,
                &mut [
                    Box::new(|| run(&mut session)),
                    Box::new(|| run(&mut winograd)),
                    Box::new(|| run(&mut w4)),
                ],
            )
        };
        println!(
            "ConvNet int8 static, {threads} threads, b{batch}, path {}: median {:.3} ms as planned, {:.3} ms with Winograd forced, {:.3} ms with 4-bit weights ({} time)",
            Isa::detect(),
            med[0] * 1e3,
            med[1] * 1e3,
            med[2] * 1e3,
            if cpu_clock() { "CPU" } else { "wall" }
        );
        print_profile(&mut session, &x, rounds);
        if batch == 1 {
            println!("  with 4-bit weights:");
            print_profile(&mut w4, &x, rounds);
        }
    }
}

fn print_profile(session: &mut Session<'_>, x: &impl Tensor<f32>, rounds: usize) {
    session.set_profiling(true);
    for _ in 0..rounds {
        session.run(x).expect("valid");
    }
    let stages = session.profile().expect("on");
    let total: f64 = stages.iter().map(|s| s.mean.as_secs_f64()).sum();
    for s in &stages {
        let t = s.mean.as_secs_f64();
        println!(
            "    {:<10} {:<16} {:8.3} ms {:5.1}%",
            s.name,
            s.kind,
            t * 1e3,
            t / total * 100.0
        );
    }
    session.set_profiling(false);
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    if what.is_empty() || what == "peak" {
        peak();
    }
    if what.is_empty() || what == "gemm" {
        gemms();
    }
    if what.is_empty() || what == "depthwise" {
        depthwise();
    }
    if what.is_empty() || what == "conv" {
        convs();
    }
    if what.is_empty() || what == "model" {
        model();
    }
}
