//! Every kernel equals its scalar reference bit for bit: odd sizes, strides wider than
//! rows, extreme values, every zero point. The suite of the path-specific kernels (int8
//! GEMM, output stage, Winograd's GEMMs, depthwise and direct convolution) is written once
//! ([`kernel_suite`]) and instantiated for every path; a path the CPU lacks is skipped
//! with a message, and a path the CPU has must be the one that ran. Winograd's reference
//! is itself checked against the direct convolution sum.

use std::ops::Range;

use cinder_tensor::RequantMultiplier;
use proptest::prelude::*;

use super::generic::reference;
use super::output::requantize_rows_with;
use super::pack::{QuadRow, WidePairRow};
use super::winograd::multiply_with;
use super::*;

/// Deterministic xorshift values for large operands (proptest shrinks the sizes).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }

    /// Activations: any i8, or mostly -128 / 127 when `extreme`.
    fn activations(&mut self, len: usize, extreme: bool) -> Vec<i8> {
        let pick = |r: &mut Self| match (extreme, r.below(4)) {
            (true, 0) => 127,
            (true, _) => -128,
            (false, _) => r.next() as i8,
        };
        (0..len).map(|_| pick(self)).collect()
    }

    /// One zero point per channel: 0 unless `asymmetric`, 127 when also `extreme` (so
    /// that -127 codes sit 254 away from it).
    fn zero_points(&mut self, len: usize, asymmetric: bool, extreme: bool) -> Vec<i32> {
        let pick = |r: &mut Self| match (asymmetric, extreme) {
            (false, _) => 0,
            (true, true) => 127,
            (true, false) => r.below(255) as i32 - 127,
        };
        (0..len).map(|_| pick(self)).collect()
    }

    /// Weights in [-127, 127], or ±127 when `extreme`.
    fn weights(&mut self, len: usize, extreme: bool) -> Vec<i8> {
        let pick = |r: &mut Self| match extreme {
            true if r.below(8) == 0 => 127,
            true => -127,
            false => (r.below(255) - 127) as i8,
        };
        (0..len).map(|_| pick(self)).collect()
    }
}

#[derive(Debug, Clone)]
struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldc: usize,
    extreme: bool,
    seed: u64,
}

fn gemm_case(
    m: Range<usize>,
    n: Range<usize>,
    k: impl Strategy<Value = usize>,
) -> impl Strategy<Value = GemmCase> {
    (m, n, k, 0usize..4, 0usize..4, any::<bool>(), 1u64..u64::MAX).prop_map(
        |(m, n, k, pa, pc, extreme, seed)| GemmCase {
            m,
            n,
            k,
            lda: k + pa,
            ldc: n + pc,
            extreme,
            seed,
        },
    )
}

/// Operands of a case, C pre-filled with a sentinel so untouched slots are checked too.
fn operands(case: &GemmCase) -> (Vec<i8>, Vec<i8>, Vec<i32>) {
    let mut rng = Rng(case.seed);
    let a = rng.activations(case.m * case.lda, case.extreme);
    let b = rng.weights(case.n * case.k, case.extreme);
    (a, b, vec![0x5eed; case.m * case.ldc])
}

/// Checks the GEMM packed for `isa` against the reference on `cols`, with A as codes and
/// as offset bytes; `isa` must be the path that ran.
fn check_gemm(isa: Isa, case: &GemmCase, cols: Range<usize>) -> Result<(), TestCaseError> {
    let (a, b, mut want) = operands(case);
    reference::gemm_s8(
        &a, case.lda, case.m, &b, case.n, case.k, &mut want, case.ldc,
    );
    // Shift the wanted columns to where a column range lands.
    let mut expected = vec![0x5eed; want.len()];
    for i in 0..case.m {
        let row = &want[i * case.ldc..][cols.clone()];
        expected[i * case.ldc..][..cols.len()].copy_from_slice(row);
    }
    let packed = PackedMatrix::pack_for(isa, &b, case.n, case.k).unwrap();
    let mut got = vec![0x5eed; want.len()];
    let ran = gemm_s8_cols(
        &a,
        case.lda,
        case.m,
        &packed,
        cols.clone(),
        &mut got,
        case.ldc,
    );
    prop_assert_eq!(&got, &expected);
    prop_assert_eq!(ran, isa, "the path that ran");
    let offset: Vec<u8> = a.iter().map(|&v| v as u8 ^ 0x80).collect();
    let mut got = vec![0x5eed; want.len()];
    let ran = gemm_u8_cols(&offset, case.lda, case.m, &packed, cols, &mut got, case.ldc);
    prop_assert_eq!(&got, &expected, "offset bytes");
    prop_assert_eq!(ran, isa, "the path that ran on offset bytes");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn row_sums_match(m in 0usize..10, k in 0usize..100, pad in 0usize..3, extreme: bool, seed in 1u64..u64::MAX) {
        let a = Rng(seed).activations(m * (k + pad), extreme);
        let (mut got, mut want) = (vec![7; m], vec![7; m]);
        row_sums_s8(&a, k + pad, m, k, &mut got);
        reference::row_sums_s8(&a, k + pad, m, k, &mut want);
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn par_gemm_matches(case in gemm_case(1..40, 1..70, 1usize..100), single_row: bool) {
        let case = GemmCase { m: if single_row { 1 } else { case.m }, ..case };
        let (a, b, mut want) = operands(&case);
        reference::gemm_s8(&a, case.lda, case.m, &b, case.n, case.k, &mut want, case.ldc);
        let mut got = vec![0x5eed; want.len()];
        par_gemm_s8(&a, case.lda, case.m, &PackedMatrix::pack(&b, case.n, case.k).unwrap(), &mut got, case.ldc);
        prop_assert_eq!(got, want);
    }
}

/// A valid multiplier: mantissa 0 or in [2^30, 2^31), exponent in [-31, 30]; mantissa
/// 2^30 and small shifts often, as they make rounding ties frequent.
fn multiplier() -> impl Strategy<Value = RequantMultiplier> {
    let mantissa = prop_oneof![1 => Just(0), 3 => Just(1 << 30), 1 => Just(i32::MAX), 5 => (1i32 << 30)..=i32::MAX];
    let exponent = prop_oneof![-31i32..=30, -3i32..=3];
    (mantissa, exponent).prop_map(|(m, e)| RequantMultiplier::new(m, e).unwrap())
}

#[derive(Debug, Clone)]
struct RequantCase {
    n: usize,
    rows: usize,
    pad: usize,
    mult: Vec<RequantMultiplier>,
    zp: i32,
    lo: i32,
    hi: i32,
    aimed: bool,
    seed: u64,
}

fn requant_case() -> impl Strategy<Value = RequantCase> {
    // Past 128 channels too: the vector paths unpack multipliers in blocks of 128; and
    // every count of whole zmm vectors a block can hold (walked with a fixed count).
    (
        prop_oneof![
            4 => 0usize..40,
            1 => 120usize..300,
            1 => (1usize..=8).prop_map(|v| 16 * v)
        ],
        1usize..4,
        0usize..3,
        any::<bool>(),
    )
        .prop_flat_map(|(n, rows, pad, per_channel)| {
            let mult = prop::collection::vec(multiplier(), if per_channel { n.max(1) } else { 1 });
            let zp = prop_oneof![-128i32..=127, -(1i32 << 24)..=(1 << 24)];
            let bounds = (-128i32..=127, -128i32..=127).prop_map(|(x, y)| (x.min(y), x.max(y)));
            (mult, zp, bounds, any::<bool>(), 1u64..u64::MAX).prop_map(
                move |(mult, zp, (lo, hi), aimed, seed)| RequantCase {
                    n,
                    rows,
                    pad,
                    mult,
                    zp,
                    lo,
                    hi,
                    aimed,
                    seed,
                },
            )
        })
}

/// Accumulators: any i32, or (when `aimed`) chosen so the result lands inside the clamp
/// window, which exposes every rounding decision.
fn accumulators(case: &RequantCase, bias: &[i32], rng: &mut Rng) -> Vec<i32> {
    let ld = case.n + case.pad;
    (0..case.rows * ld)
        .map(|i| {
            let m = case.mult[if case.mult.len() == 1 {
                0
            } else {
                i % ld % case.n.max(1)
            }];
            if !case.aimed || m.multiplier == 0 || i % ld >= case.n {
                return rng.next() as i32;
            }
            let target = f64::from(i32::midpoint(case.lo, case.hi) - case.zp)
                + rng.below(300) as f64
                - 150.0;
            // A small offset makes odd accumulators, hence ties, for mantissa 2^30.
            let acc = (target / m.to_real()).round() + (rng.below(7) - 3) as f64;
            let acc = acc.clamp(f64::from(i32::MIN), f64::from(i32::MAX));
            (acc as i32).wrapping_sub(bias[i % ld])
        })
        .collect()
}

/// The output stage on `isa` (and, for the detected path, the public entry points)
/// against the reference.
fn check_requantize(isa: Isa, case: &RequantCase) -> Result<(), TestCaseError> {
    {
        let mut rng = Rng(case.seed);
        let bias: Vec<i32> = (0..case.n)
            .map(|_| match rng.below(2) {
                0 => rng.below(2001) as i32 - 1000,
                _ => rng.next() as i32,
            })
            .collect();
        let acc = accumulators(case, &bias, &mut rng);
        let ld = case.n + case.pad;
        let mut want = vec![0x11; case.rows * ld];
        for i in 0..case.rows {
            let (acc, want) = (&acc[i * ld..], &mut want[i * ld..]);
            reference::requantize_s8(acc, &bias, &case.mult, case.zp, case.lo, case.hi, want);
        }
        let stage = OutputStage {
            bias: &bias,
            mult: &case.mult,
            zp_out: case.zp,
            lo: case.lo,
            hi: case.hi,
        };
        let mut got = vec![0x11; want.len()];
        requantize_rows_with(isa, &stage, &acc, ld, case.rows, &mut got, ld);
        prop_assert_eq!(&got, &want);
        if isa == Isa::detect() {
            requantize_s8_rows(&stage, &acc, ld, case.rows, &mut got, ld);
            prop_assert_eq!(&got, &want);
            let mut one = vec![0x11; case.n];
            requantize_s8(&acc, &bias, &case.mult, case.zp, case.lo, case.hi, &mut one);
            prop_assert_eq!(&one[..], &want[..case.n]);
        }
    }
    Ok(())
}

/// Window geometry where the window fits the padded image at least once; strides beyond
/// the image (one window) up to `usize::MAX` included.
fn window() -> impl Strategy<Value = (usize, usize, usize, usize, usize)> {
    let stride = prop_oneof![8 => 1usize..4, 1 => 9usize..13, 1 => Just(usize::MAX / 3), 1 => Just(usize::MAX)];
    (1usize..9, 1usize..9, 1usize..5, stride, 0usize..3)
        .prop_filter("window must fit", |&(h, w, k, _, p)| {
            h + 2 * p >= k && w + 2 * p >= k
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn im2col_matches((h, w, kernel, stride, padding) in window(), c in prop_oneof![1usize..6, Just(64)], pad_value: i8, extra in 0usize..3, seed in 1u64..u64::MAX) {
        let input = Rng(seed).activations(h * w * c, false);
        let (oh, ow) = (out_dim(h, kernel, stride, padding).unwrap(), out_dim(w, kernel, stride, padding).unwrap());
        let ld = kernel * kernel * c + extra;
        let (mut got, mut want) = (vec![0x55; oh * ow * ld], vec![0x55; oh * ow * ld]);
        im2col_nhwc_s8(&input, h, w, c, kernel, stride, padding, pad_value, &mut got, ld);
        reference::im2col_nhwc_s8(&input, h, w, c, kernel, stride, padding, pad_value, &mut want, ld);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn max_pool2x2_sums_match(half_rows in 0usize..5, w in 0usize..9, c in prop_oneof![1usize..20, Just(64)], extreme: bool, seed in 1u64..u64::MAX) {
        let mut rng = Rng(seed);
        let rows = 2 * half_rows;
        let input: Vec<i32> = (0..rows * w * c)
            .map(|_| if extreme { [i32::MIN, i32::MAX][rng.below(2) as usize] } else { rng.next() as i32 })
            .collect();
        let len = half_rows * (w / 2) * c;
        let (mut got, mut want) = (vec![0x55; len + 3], vec![0x55; len + 3]);
        max_pool2x2_s32(&input, rows, w, c, &mut got);
        reference::max_pool2x2_s32(&input, rows, w, c, &mut want);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn input_quantizer_transposes_and_rounds_each_value(c in 1usize..9, h in 1usize..12, w in 1usize..12, scale in 0.001f32..1.0, zero_point in -128i32..=127, special in 0usize..4, seed in 1u64..u64::MAX) {
        let mut rng = Rng(seed);
        let mut x: Vec<f32> = (0..c * h * w).map(|_| (rng.below(2001) - 1000) as f32 * 0.37).collect();
        // Ties, NaN and infinities where the case asks for them.
        let at = rng.below(x.len() as u64) as usize;
        x[at] = [2.5 * scale, f32::NAN, f32::INFINITY, f32::NEG_INFINITY][special];
        let p = cinder_tensor::QuantParams::new(scale, zero_point, -128, 127).unwrap();
        let mut got = vec![0x55; c * h * w];
        let finite = quantize_f32_s8(&x, Some([c, h, w]), &p, &mut got);
        prop_assert_eq!(finite, special == 0, "whether the values were finite");
        for (i, &g) in got.iter().enumerate() {
            let (pixel, ch) = (i / c, i % c);
            prop_assert_eq!(i32::from(g), p.quantize(x[ch * h * w + pixel]), "value {}", i);
        }
        let mut flat = vec![0x55; x.len()];
        prop_assert_eq!(quantize_f32_s8(&x, None, &p, &mut flat), special == 0);
        prop_assert!(flat.iter().zip(&x).all(|(&g, &v)| i32::from(g) == p.quantize(v)));
    }

    #[test]
    fn max_pool_matches((h, w, kernel, stride, _) in window(), c in prop_oneof![1usize..20, Just(64)], extreme: bool, seed in 1u64..u64::MAX) {
        prop_assume!(h >= kernel && w >= kernel);
        let input = Rng(seed).activations(h * w * c, extreme);
        let len = out_dim(h, kernel, stride, 0).unwrap() * out_dim(w, kernel, stride, 0).unwrap() * c;
        let (mut got, mut want) = (vec![0x55; len], vec![0x55; len]);
        max_pool2d_nhwc_s8(&input, h, w, c, kernel, stride, &mut got);
        reference::max_pool2d_nhwc_s8(&input, h, w, c, kernel, stride, &mut want);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn pack_rejects_bad_weights() {
    assert_eq!(
        PackedMatrix::pack(&[1, 2, 3], 2, 2).unwrap_err(),
        KernelError::WrongLength {
            rows: 2,
            depth: 2,
            expected: 4,
            got: 3
        }
    );
    assert_eq!(
        PackedMatrix::pack(&[1, 2, 3, -128], 2, 2).unwrap_err(),
        KernelError::WeightOutOfRange { row: 1, col: 1 }
    );
    assert!(matches!(
        PackedMatrix::pack(&[], 0, MAX_DEPTH + 1),
        Err(KernelError::DepthTooLarge { .. })
    ));
    assert!(matches!(
        PackedMatrix::pack(&[], usize::MAX, 2),
        Err(KernelError::WrongLength { .. })
    ));
}

#[test]
fn pack_keeps_shape_and_column_sums() {
    let b = PackedMatrix::pack(&[1, -2, 3, 127, -127, 5], 2, 3).unwrap();
    assert_eq!((b.rows(), b.depth()), (2, 3));
    assert_eq!(b.col_sums(), &[2, 5]);
    assert_eq!(
        PackedMatrix::pack(&[], 3, 0).unwrap().col_sums(),
        &[0, 0, 0]
    );
}

#[test]
fn max_depth_sums_do_not_overflow() {
    let (k, a) = (MAX_DEPTH, vec![-128i8; MAX_DEPTH]);
    for isa in Isa::ALL.into_iter().filter(|isa| isa.supported()) {
        let b = PackedMatrix::pack_for(isa, &vec![-127; 2 * k], 2, k).unwrap();
        let mut c = [0; 2];
        gemm_s8(&a, k, 1, &b, &mut c, 2);
        assert_eq!(c, [(128 * 127 * k) as i32; 2], "{isa}");
    }
}

#[test]
fn out_dim_follows_the_conv_formula() {
    assert_eq!(out_dim(32, 3, 1, 1), Some(32));
    assert_eq!(out_dim(32, 2, 2, 0), Some(16));
    assert_eq!(out_dim(7, 2, 2, 0), Some(3));
    assert_eq!(out_dim(2, 3, 1, 0), None);
    assert_eq!(out_dim(4, 2, 0, 0), None);
    assert_eq!(out_dim(4, 0, 1, 0), None);
}

#[derive(Debug, Clone)]
struct WinogradCase {
    h: usize,
    w: usize,
    c: usize,
    n: usize,
    padding: usize,
    zp_in: i8,
    asymmetric: bool,
    extreme: bool,
    seed: u64,
}

/// Images of 1..10 pixels a side (odd output sizes included), padding 0..=2, any zero
/// points, extreme inputs and weights 255 away from their zero point among them.
fn winograd_case(
    c: impl Strategy<Value = usize>,
    n: impl Strategy<Value = usize>,
) -> impl Strategy<Value = WinogradCase> {
    let zp_in = prop_oneof![any::<i8>(), Just(-128), Just(127)];
    let flags = (any::<bool>(), any::<bool>(), 1u64..u64::MAX);
    ((1usize..10, 1usize..10, 0usize..3), c, n, zp_in, flags)
        .prop_filter("window must fit", |((h, w, p), ..)| {
            h + 2 * p >= 3 && w + 2 * p >= 3
        })
        .prop_map(
            |((h, w, padding), c, n, zp_in, (asymmetric, extreme, seed))| WinogradCase {
                h,
                w,
                c,
                n,
                padding,
                zp_in,
                asymmetric,
                extreme,
                seed,
            },
        )
}

impl WinogradCase {
    fn geometry(&self) -> WinogradGeometry {
        WinogradGeometry::new(self.h, self.w, self.c, self.padding).unwrap()
    }

    /// The image, the codes `[n][3][3][c]` and one zero point per output channel; extreme
    /// weights sit 254 away from their zero point (-127 codes, zero point 127).
    fn operands(&self) -> (Vec<i8>, Vec<i8>, Vec<i32>) {
        let mut rng = Rng(self.seed);
        let image = rng.activations(self.h * self.w * self.c, self.extreme);
        let codes = rng.weights(self.n * 9 * self.c, self.extreme);
        let zero_points = rng.zero_points(self.n, self.asymmetric, self.extreme);
        (image, codes, zero_points)
    }

    /// `Σ (x − zp_in) · (w − zw)` per output pixel and channel, straight from im2col.
    fn direct(&self, image: &[i8], codes: &[i8], zero_points: &[i32]) -> Vec<i32> {
        let g = self.geometry();
        let k = 9 * self.c;
        let mut cols = vec![0; g.oh * g.ow * k];
        reference::im2col_nhwc_s8(
            image,
            self.h,
            self.w,
            self.c,
            3,
            1,
            self.padding,
            self.zp_in,
            &mut cols,
            k,
        );
        let mut out = Vec::with_capacity(g.oh * g.ow * self.n);
        for row in cols.chunks_exact(k.max(1)).take(g.oh * g.ow) {
            for (j, &zw) in zero_points.iter().enumerate() {
                let sum: i64 = (0..k)
                    .map(|p| {
                        let x = i64::from(row[p]) - i64::from(self.zp_in);
                        x * (i64::from(codes[j * k + p]) - i64::from(zw))
                    })
                    .sum();
                out.push(i32::try_from(sum).unwrap());
            }
        }
        out
    }

    fn reference(&self, image: &[i8], codes: &[i8], zero_points: &[i32]) -> Vec<i32> {
        let g = self.geometry();
        let mut out = vec![0x5eed; g.oh * g.ow * self.n];
        reference::winograd_conv_nhwc_s8(
            image,
            self.h,
            self.w,
            self.c,
            self.padding,
            self.zp_in,
            codes,
            zero_points,
            &mut out,
        );
        out
    }
}

/// Winograd's GEMMs on `isa` (and, for the detected path, the public entry point) against
/// the reference.
fn check_winograd_multiply(
    isa: Isa,
    (tiles, c, n): (usize, usize, usize),
    extreme: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed);
    let stride = c.next_multiple_of(2);
    // Transformed inputs span [-1020, 1020]; a padding channel holds garbage, which
    // the zero filter entries must cancel.
    let u: Vec<i16> = (0..WINOGRAD_POSITIONS * tiles * stride)
        .map(|_| match extreme {
            true => [-1020, 1020][rng.below(2) as usize],
            false => rng.below(2041) as i16 - 1020,
        })
        .collect();
    let codes = rng.weights(n * 9 * c, extreme);
    let zero_points: Vec<i32> = (0..n)
        .map(|_| {
            if extreme {
                127
            } else {
                rng.below(255) as i32 - 127
            }
        })
        .collect();
    let filter = WinogradFilter::pack(&codes, &zero_points, n, c).unwrap();
    let ldm = winograd_products_stride(n);
    // The padding past each tile's products is left alone.
    let mut want = vec![0x5eed; tiles * ldm];
    reference::winograd_multiply(&u, tiles, stride, &codes, &zero_points, c, &mut want, ldm);
    let mut got = vec![0x5eed; want.len()];
    multiply_with(isa, &u, tiles, &filter, &mut got);
    prop_assert_eq!(&got, &want);
    if isa == Isa::detect() {
        winograd_multiply(&u, tiles, &filter, &mut got);
        prop_assert_eq!(&got, &want, "public");
    }
    Ok(())
}

/// The fast Winograd pipeline over blocks of `block_rows` tile rows, through `multiply`,
/// every buffer pre-filled with a sentinel.
fn winograd_fast(
    case: &WinogradCase,
    block_rows: usize,
    multiply: impl Fn(&[i16], usize, &WinogradFilter, &mut [i32]),
) -> Vec<i32> {
    let (image, codes, zero_points) = case.operands();
    let g = case.geometry();
    let filter = WinogradFilter::pack(&codes, &zero_points, case.n, case.c).unwrap();
    let mut out = vec![0x5eed; g.oh * g.ow * case.n];
    for ty in (0..g.tiles_y).step_by(block_rows) {
        let rows = ty..g.tiles_y.min(ty + block_rows);
        let tiles = g.tiles(rows.clone());
        let mut u = vec![0x7eed; WINOGRAD_POSITIONS * tiles * g.depth_stride()];
        winograd_input_tiles(&image, &g, case.zp_in, rows.clone(), &mut u);
        let mut m = vec![0x5eed; tiles * winograd_products_stride(case.n)];
        multiply(&u, tiles, &filter, &mut m);
        let pixels = g.pixels(rows.clone());
        let y = &mut out[pixels.start * case.n..pixels.end * case.n];
        winograd_output_tiles(&m, &g, case.n, rows, y);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn winograd_reference_equals_direct_convolution(case in winograd_case(1usize..5, 1usize..4)) {
        let (image, codes, zero_points) = case.operands();
        prop_assert_eq!(case.reference(&image, &codes, &zero_points), case.direct(&image, &codes, &zero_points));
    }

    #[test]
    fn winograd_input_tiles_match(case in winograd_case(prop_oneof![1usize..6, 15usize..40], Just(1)), block_rows in 1usize..4) {
        let (image, ..) = case.operands();
        let g = case.geometry();
        let stride = g.depth_stride();
        for ty in (0..g.tiles_y).step_by(block_rows) {
            let rows = ty..g.tiles_y.min(ty + block_rows);
            let tiles = g.tiles(rows.clone());
            let mut u = vec![0x7eed; WINOGRAD_POSITIONS * tiles * stride];
            winograd_input_tiles(&image, &g, case.zp_in, rows.clone(), &mut u);
            for t in 0..tiles {
                let (ty, tx) = (rows.start + t / g.tiles_x, t % g.tiles_x);
                for ch in 0..stride {
                    let d: [[i32; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|s| {
                        let y = (2 * ty + i).checked_sub(case.padding).filter(|&y| y < case.h && ch < case.c);
                        let x = (2 * tx + s).checked_sub(case.padding).filter(|&x| x < case.w);
                        y.zip(x).map_or(0, |(y, x)| i32::from(image[(y * case.w + x) * case.c + ch]) - i32::from(case.zp_in))
                    }));
                    let want = reference::winograd_input(&d);
                    for (position, &v) in want.as_flattened().iter().enumerate() {
                        prop_assert_eq!(i32::from(u[(position * tiles + t) * stride + ch]), v);
                    }
                }
            }
        }
    }

    #[test]
    fn winograd_output_tiles_match(h in 3usize..12, w in 3usize..12, n in prop_oneof![1usize..5, 15usize..40], block_rows in 1usize..4, seed in 1u64..u64::MAX) {
        let g = WinogradGeometry::new(h, w, 1, 0).unwrap();
        let mut rng = Rng(seed);
        for ty in (0..g.tiles_y).step_by(block_rows) {
            let rows = ty..g.tiles_y.min(ty + block_rows);
            let tiles = g.tiles(rows.clone());
            // Multiples of 4, as products are, so that Y is too; near the i32 extremes.
            let ldm = winograd_products_stride(n);
            let m: Vec<i32> = (0..tiles * ldm).map(|_| (rng.next() as i32) & !3).collect();
            let pixels = g.pixels(rows.clone());
            let mut y = vec![0x5eed; pixels.len() * n];
            winograd_output_tiles(&m, &g, n, rows.clone(), &mut y);
            for t in 0..tiles {
                let (ty, tx) = (rows.start + t / g.tiles_x, t % g.tiles_x);
                for j in 0..n {
                    let mt: [[i32; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|s| m[t * ldm + (4 * i + s) * n + j]));
                    let want = reference::winograd_output(&mt);
                    for (i, row) in want.iter().enumerate() {
                        for (s, &sum) in row.iter().enumerate() {
                            let (oy, ox) = (2 * ty + i, 2 * tx + s);
                            if oy < g.oh && ox < g.ow {
                                prop_assert_eq!(y[(oy * g.ow + ox - pixels.start) * n + j], sum >> 2);
                            }
                        }
                    }
                }
            }
        }
    }

}

#[derive(Debug, Clone)]
struct DepthwiseCase {
    shape: NhwcWindow,
    zp_in: i8,
    asymmetric: bool,
    extreme: bool,
    seed: u64,
}

/// Images of 1..12 pixels a side, `c` channels, windows of `kernel` taps a side (each
/// side drawn on its own), strides 1 and 2, padding 0..=2, any zero points, extreme
/// inputs and weights 254 away from their zero point among them.
fn depthwise_case(
    c: impl Strategy<Value = usize>,
    kernel: impl Strategy<Value = usize> + Clone,
) -> impl Strategy<Value = DepthwiseCase> {
    let zp_in = prop_oneof![any::<i8>(), Just(-128), Just(127)];
    let geometry = (
        (1usize..12, 1usize..12),
        (kernel.clone(), kernel),
        (1usize..3, 1usize..3),
    );
    let flags = (
        0usize..3,
        0usize..3,
        any::<bool>(),
        any::<bool>(),
        1u64..u64::MAX,
    );
    (geometry, c, zp_in, flags)
        .prop_map(
            |(((h, w), (kh, kw), (sh, sw)), c, zp_in, (ph, pw, asymmetric, extreme, seed))| {
                DepthwiseCase {
                    shape: NhwcWindow {
                        input: [h, w, c],
                        kernel: [kh, kw],
                        stride: [sh, sw],
                        padding: [ph, pw],
                    },
                    zp_in,
                    asymmetric,
                    extreme,
                    seed,
                }
            },
        )
        .prop_filter("window must fit", |case| {
            let s = &case.shape;
            (0..2).all(|i| s.input[i] + 2 * s.padding[i] >= s.kernel[i])
        })
}

impl DepthwiseCase {
    /// The image, the codes `[c][kh · kw]` and one zero point per channel; extreme
    /// weights sit 254 away from their zero point (-127 codes, zero point 127).
    fn operands(&self) -> (Vec<i8>, Vec<i8>, Vec<i32>) {
        let [h, w, c] = self.shape.input;
        let taps = self.shape.kernel[0] * self.shape.kernel[1];
        let mut rng = Rng(self.seed);
        let image = rng.activations(h * w * c, self.extreme);
        let codes = rng.weights(c * taps, self.extreme);
        let zero_points = rng.zero_points(c, self.asymmetric, self.extreme);
        (image, codes, zero_points)
    }
}

/// The depthwise kernel packed for `isa` against the reference, on all output rows and
/// on the band `oh / 2 .. oh`; `isa` must be the path that ran.
fn check_depthwise(isa: Isa, case: &DepthwiseCase) -> Result<(), TestCaseError> {
    let (image, codes, zero_points) = case.operands();
    let [_, _, c] = case.shape.input;
    let [oh, ow] = case.shape.output();
    let taps = case.shape.kernel[0] * case.shape.kernel[1];
    let want = reference::depthwise_nhwc_s8(&image, &case.shape, case.zp_in, &codes, &zero_points);
    let filter = DepthwiseFilter::pack_for(isa, &codes, &zero_points, c, taps).unwrap();
    prop_assert_eq!(filter.isa(), isa);
    // One sentinel past the sums must stay.
    let mut got = vec![0x5eed; want.len() + 1];
    let ran = depthwise_nhwc_s8(&image, &case.shape, case.zp_in, &filter, 0..oh, &mut got);
    prop_assert_eq!(ran, isa, "the path that ran");
    prop_assert_eq!(&got[..want.len()], &want[..]);
    prop_assert_eq!(got[want.len()], 0x5eed);
    let band = oh / 2..oh;
    let mut part = vec![0x5eed; band.len() * ow * c];
    depthwise_nhwc_s8(
        &image,
        &case.shape,
        case.zp_in,
        &filter,
        band.clone(),
        &mut part,
    );
    prop_assert_eq!(&part[..], &want[band.start * ow * c..]);
    Ok(())
}

/// A direct convolution: an image of at most four channels (windows built as rows of
/// quads) or of window rows of whole quads (read in place), any window that fits at
/// stride 1, `n` outputs, pooled or not.
#[derive(Debug, Clone)]
struct DirectCase {
    window: NhwcWindow,
    n: usize,
    pool: bool,
    zp_in: i8,
    extreme: bool,
    seed: u64,
}

/// Images of 1..14 pixels a side and 1..=24 or 32 channels, windows of 1..=5 taps a
/// side, padding 0..=2, 1..70 outputs (whole and partial blocks of 16, tiles of 2, 4 and
/// 8 pixels a row with narrower ones at the row's end), any zero point, extreme inputs
/// and weights among them.
fn direct_case() -> impl Strategy<Value = DirectCase> {
    let zp_in = prop_oneof![any::<i8>(), Just(-128), Just(127)];
    let geometry = (
        (1usize..14, 1usize..14),
        (1usize..=5, 1usize..=5),
        (0usize..3, 0usize..3),
    );
    let rest = (
        prop_oneof![1usize..=4, 5usize..=24, Just(32)],
        prop_oneof![1usize..70, Just(16), Just(32), Just(64)],
        any::<bool>(),
        zp_in,
    );
    (geometry, rest, any::<bool>(), 1u64..u64::MAX)
        .prop_map(
            |(((h, w), kernel, (ph, pw)), (c, n, pool, zp_in), extreme, seed)| DirectCase {
                window: NhwcWindow {
                    input: [h, w, c],
                    kernel: [kernel.0, kernel.1],
                    stride: [1, 1],
                    padding: [ph, pw],
                },
                n,
                pool,
                zp_in,
                extreme,
                seed,
            },
        )
        .prop_filter("the kernel must fit", |case| {
            DirectFilter::fits(&case.window, case.n, case.pool)
        })
}

impl DirectCase {
    /// The image and the codes `[n][ky][kx][c]`.
    fn operands(&self) -> (Vec<i8>, Vec<i8>) {
        let [h, w, c] = self.window.input;
        let taps = self.window.kernel[0] * self.window.kernel[1];
        let mut rng = Rng(self.seed);
        (
            rng.activations(h * w * c, self.extreme),
            rng.weights(self.n * taps * c, self.extreme),
        )
    }

    /// The plain sums `Σ_inside (x - zp_in) · w` of every output pixel, `[oh][ow][n]`,
    /// then each 2×2 block's maximum when pooled.
    fn reference(&self, image: &[i8], codes: &[i8]) -> Vec<i32> {
        let [oh, ow] = self.window.output();
        let ([_, _, c], kw) = (self.window.input, self.window.kernel[1]);
        let taps = self.window.kernel[0] * kw;
        let sum = |oy: usize, ox: usize, o: usize| -> i32 {
            self.window
                .inside(oy, ox)
                .flat_map(|([ky, kx], p)| {
                    let w = &codes[(o * taps + ky * kw + kx) * c..][..c];
                    w.iter().zip(&image[p * c..][..c])
                })
                .map(|(&w, &x)| (i32::from(x) - i32::from(self.zp_in)) * i32::from(w))
                .sum()
        };
        let mut sums = Vec::new();
        match self.pool {
            true => {
                for (py, px, o) in grid(oh / 2, ow / 2, self.n) {
                    let block = [(0, 0), (0, 1), (1, 0), (1, 1)];
                    sums.push(
                        block
                            .map(|(dy, dx)| sum(2 * py + dy, 2 * px + dx, o))
                            .into_iter()
                            .max()
                            .unwrap(),
                    );
                }
            }
            false => sums.extend(grid(oh, ow, self.n).map(|(y, x, o)| sum(y, x, o))),
        }
        sums
    }
}

/// `(y, x, o)` in row-major order.
fn grid(h: usize, w: usize, n: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..h).flat_map(move |y| (0..w).flat_map(move |x| (0..n).map(move |o| (y, x, o))))
}

/// The direct kernel packed for `isa` against the plain sums, on all rows and on a band
/// of rows from an even one; the path that ran must be `isa`'s kernel (generic where the
/// path has none).
fn check_direct(isa: Isa, case: &DirectCase) -> Result<(), TestCaseError> {
    let (image, codes) = case.operands();
    let want = case.reference(&image, &codes);
    let filter = DirectFilter::pack_for(isa, &codes, case.n, case.window, case.zp_in).unwrap();
    let [oh, ow] = case.window.output();
    let rows = if case.pool { oh / 2 * 2 } else { oh };
    let mut padded = Vec::new();
    let mut got = vec![0x5eed; want.len() + 1];
    let ran = direct_conv_nhwc_s8(&filter, &image, 0..rows, case.pool, &mut padded, &mut got);
    let expected = if isa == Isa::Avx512Vnni {
        isa
    } else {
        Isa::Generic
    };
    prop_assert_eq!(ran, expected, "the path that ran");
    prop_assert_eq!(&got[..want.len()], &want[..]);
    prop_assert_eq!(got[want.len()], 0x5eed);
    let band = rows / 4 * 2..rows;
    let skipped = match case.pool {
        true => band.start / 2 * (ow / 2) * case.n,
        false => band.start * ow * case.n,
    };
    let mut part = vec![0x5eed; want.len() - skipped];
    direct_conv_nhwc_s8(&filter, &image, band, case.pool, &mut padded, &mut part);
    prop_assert_eq!(&part[..], &want[skipped..]);
    Ok(())
}

/// The suite of the path-specific kernels, instantiated per path: `$name` runs every
/// test on `$isa` (each test passes without running where the CPU lacks it, and
/// `cpu_support` says so).
macro_rules! kernel_suite {
    ($($name:ident: $isa:expr;)*) => {$(
        mod $name {
            use super::*;

            const ISA: Isa = $isa;

            #[test]
            fn cpu_support() {
                if !ISA.supported() {
                    eprintln!("skipped: this CPU has no {ISA} instructions; this suite's tests do not run");
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(512))]

                #[test]
                fn gemm_small_and_odd(case in gemm_case(0..14, 0..72, prop_oneof![0usize..70, Just(27)])) {
                    if ISA.supported() {
                        check_gemm(ISA, &case, 0..case.n)?;
                    }
                }

                #[test]
                fn gemm_column_ranges(case in gemm_case(1..9, 1..50, 1usize..40), from in 0usize..50, len in 0usize..50) {
                    let start = from % case.n;
                    if ISA.supported() {
                        check_gemm(ISA, &case, start..case.n.min(start + len))?;
                    }
                }

                #[test]
                fn requantize_matches(case in requant_case()) {
                    if ISA.supported() {
                        check_requantize(ISA, &case)?;
                    }
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(48))]

                /// Several row blocks and depth blocks, long sums at the extremes.
                #[test]
                fn gemm_blocked_depth(case in gemm_case(40..110, 1..70, prop_oneof![560usize..700, 1200usize..1300])) {
                    if ISA.supported() {
                        check_gemm(ISA, &case, 0..case.n)?;
                    }
                }

                #[test]
                fn gemm_long_depth_extreme(mut case in gemm_case(1..8, 1..20, 2000usize..3000)) {
                    case.extreme = true;
                    if ISA.supported() {
                        check_gemm(ISA, &case, 0..case.n)?;
                    }
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(128))]

                #[test]
                fn winograd_multiply_matches(tiles in 0usize..20, c in prop_oneof![1usize..8, 60usize..70], n in prop_oneof![1usize..20, Just(32)], extreme: bool, seed in 1u64..u64::MAX) {
                    if ISA.supported() {
                        check_winograd_multiply(ISA, (tiles, c, n), extreme, seed)?;
                    }
                }

                #[test]
                fn depthwise_matches(case in depthwise_case(prop_oneof![1usize..20, 30usize..70, Just(96)], 1usize..6)) {
                    if ISA.supported() {
                        check_depthwise(ISA, &case)?;
                    }
                }

                #[test]
                fn direct_conv_matches(case in direct_case()) {
                    if ISA.supported() {
                        check_direct(ISA, &case)?;
                    }
                }

                /// Windows of more taps than one pass takes.
                #[test]
                fn depthwise_long_windows(case in depthwise_case(prop_oneof![1usize..20, Just(33)], 5usize..9)) {
                    if ISA.supported() {
                        check_depthwise(ISA, &case)?;
                    }
                }

                /// The whole pipeline, blocks of tile rows of any height.
                #[test]
                fn winograd_pipeline_equals_reference(case in winograd_case(prop_oneof![1usize..6, Just(17), Just(27)], prop_oneof![1usize..6, 15usize..34]), block_rows in 1usize..4) {
                    if ISA.supported() {
                        let (image, codes, zero_points) = case.operands();
                        let want = case.reference(&image, &codes, &zero_points);
                        let multiply = |u: &[i16], tiles, f: &WinogradFilter, m: &mut [i32]| multiply_with(ISA, u, tiles, f, m);
                        prop_assert_eq!(&winograd_fast(&case, block_rows, multiply), &want);
                    }
                }
            }
        }
    )*};
}

kernel_suite! {
    generic: Isa::Generic;
    avx2: Isa::Avx2;
    avxvnni: Isa::AvxVnni;
    avx512vnni_ymm: Isa::Avx512VnniYmm;
    avx512vnni: Isa::Avx512Vnni;
}

/// The process takes the best path of the CPU: no silent fall-back to a slower one.
#[test]
fn the_best_path_runs() {
    if let Ok(cap) = std::env::var(ISA_VARIABLE) {
        eprintln!("skipped: {ISA_VARIABLE}={cap} caps the path");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let best = {
        use std::arch::is_x86_feature_detected as has;
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
        if has!("avx2") && avx512 && has!("avx512vnni") {
            Isa::Avx512Vnni
        } else if has!("avx2") && has!("avxvnni") {
            Isa::AvxVnni
        } else if has!("avx2") {
            Isa::Avx2
        } else {
            Isa::Generic
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let best = Isa::Generic;
    assert_eq!(Isa::detect(), best);
    let packed = PackedMatrix::pack(&[1, 2], 1, 2).unwrap();
    assert_eq!(packed.isa(), best);
    let mut c = [0];
    assert_eq!(
        (gemm_s8(&[3, 4], 2, 1, &packed, &mut c, 1), c),
        (best, [11]),
        "gemm"
    );
    let filter = DepthwiseFilter::pack(&[1; 9], &[0], 1, 9).unwrap();
    assert_eq!(filter.isa(), best);
    let shape = NhwcWindow {
        input: [3, 3, 1],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [0, 0],
    };
    let mut sums = [0];
    let ran = depthwise_nhwc_s8(&[1; 9], &shape, 0, &filter, 0..1, &mut sums);
    assert_eq!((ran, sums), (best, [9]), "depthwise");
    let window = NhwcWindow {
        input: [2, 2, 1],
        padding: [1, 1],
        ..shape
    };
    let filter = DirectFilter::pack_for(best, &[1; 9], 1, window, 0).unwrap();
    let mut sums = [0; 4];
    let ran = direct_conv_nhwc_s8(&filter, &[1; 4], 0..2, false, &mut Vec::new(), &mut sums);
    let direct = if best == Isa::Avx512Vnni {
        best
    } else {
        Isa::Generic
    };
    assert_eq!((ran, sums), (direct, [4; 4]), "direct convolution");
    eprintln!("the kernels take the {best} path on this CPU");
}

#[test]
fn isa_names_round_trip() {
    for isa in Isa::ALL {
        assert_eq!(Isa::from_name(isa.name()), Ok(isa));
        assert!(Isa::best_up_to(isa) <= isa);
    }
    assert_eq!(Isa::from_name("sse2"), Err(UnknownIsa("sse2".to_owned())));
    assert_eq!(Isa::best_up_to(Isa::Generic), Isa::Generic);
}

#[test]
fn winograd_at_the_channel_limit_does_not_overflow() {
    let c = MAX_WINOGRAD_CHANNELS;
    // Inputs -128 with zero point 127 and weights -128 with zero point 127: every product
    // is 255², the largest the bounds allow.
    let (image, codes) = (vec![-128i8; 9 * c], vec![-128i8; 9 * c]);
    let g = WinogradGeometry::new(3, 3, c, 0).unwrap();
    let filter = WinogradFilter::pack(&codes, &[127], 1, c).unwrap();
    let mut u = vec![0; WINOGRAD_POSITIONS * g.depth_stride()];
    winograd_input_tiles(&image, &g, 127, 0..1, &mut u);
    let mut m = vec![0; winograd_products_stride(1)];
    winograd_multiply(&u, 1, &filter, &mut m);
    let mut y = [0];
    winograd_output_tiles(&m, &g, 1, 0..1, &mut y);
    assert_eq!(i64::from(y[0]), 9 * c as i64 * 255 * 255);
}

#[test]
fn winograd_filter_rejects_what_could_overflow() {
    let c = MAX_WINOGRAD_CHANNELS + 1;
    assert_eq!(
        WinogradFilter::pack(&vec![0; 9 * c], &[0], 1, c).unwrap_err(),
        KernelError::TooManyChannels {
            channels: c,
            max: MAX_WINOGRAD_CHANNELS
        }
    );
    let mut codes = vec![0i8; 18];
    codes[13] = 127;
    assert_eq!(
        WinogradFilter::pack(&codes, &[-129], 1, 2).unwrap_err(),
        KernelError::CenteredWeightOutOfRange {
            row: 0,
            col: 13,
            value: 256
        }
    );
    assert!(matches!(
        WinogradFilter::pack(&[0; 17], &[0], 1, 2),
        Err(KernelError::WrongLength { .. })
    ));
}

#[test]
fn wide_panels_are_cache_lines() {
    assert_eq!(std::mem::size_of::<WidePairRow>(), 64);
    assert_eq!(std::mem::align_of::<WidePairRow>(), 64);
    assert_eq!(std::mem::size_of::<QuadRow>(), 64);
    assert_eq!(std::mem::align_of::<QuadRow>(), 64);
}

#[test]
fn direct_filter_rejects_windows_it_does_not_compute() {
    let window = NhwcWindow {
        input: [8, 8, 5],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
    };
    let five_channels = DirectFilter::pack_for(Isa::detect(), &[0; 45], 1, window, 0);
    assert!(matches!(
        five_channels,
        Err(KernelError::DirectWindow { .. })
    ));
    let strided = NhwcWindow {
        input: [8, 8, 3],
        stride: [2, 2],
        ..window
    };
    let err = DirectFilter::pack_for(Isa::detect(), &[0; 27], 1, strided, 0).unwrap_err();
    assert!(err.to_string().contains("stride 1"), "{err}");
    let short = NhwcWindow {
        input: [8, 8, 3],
        ..window
    };
    let err = DirectFilter::pack_for(Isa::detect(), &[0; 26], 1, short, 0).unwrap_err();
    assert!(matches!(err, KernelError::WrongLength { .. }), "{err}");
}

#[test]
fn depthwise_filter_rejects_what_could_overflow() {
    let taps = MAX_DEPTHWISE_TAPS + 1;
    assert_eq!(
        DepthwiseFilter::pack(&vec![0; taps], &[0], 1, taps).unwrap_err(),
        KernelError::TooManyTaps {
            taps,
            max: MAX_DEPTHWISE_TAPS
        }
    );
    assert_eq!(
        DepthwiseFilter::pack(&[0, 0, 127, 0], &[0, -129], 2, 2).unwrap_err(),
        KernelError::CenteredWeightOutOfRange {
            row: 1,
            col: 0,
            value: 256
        }
    );
    assert!(matches!(
        DepthwiseFilter::pack(&[0; 5], &[0, 0], 2, 3),
        Err(KernelError::WrongLength { .. })
    ));
}

#[test]
fn depthwise_at_the_tap_limit_does_not_overflow() {
    // Inputs -128 with zero point 127 and centred weights -255: every product is 255².
    let taps = MAX_DEPTHWISE_TAPS;
    let (image, codes) = (vec![-128i8; taps], vec![-127i8; taps]);
    let shape = NhwcWindow {
        input: [1, taps, 1],
        kernel: [1, taps],
        stride: [1, 1],
        padding: [0, 0],
    };
    for isa in Isa::ALL.into_iter().filter(|isa| isa.supported()) {
        let filter = DepthwiseFilter::pack_for(isa, &codes, &[128], 1, taps).unwrap();
        let mut sums = [0];
        depthwise_nhwc_s8(&image, &shape, 127, &filter, 0..1, &mut sums);
        assert_eq!(i64::from(sums[0]), taps as i64 * 255 * 255, "{isa}");
    }
}
