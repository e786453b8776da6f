//! The capability token: which instruction-set path the kernels take, decided once per
//! process ([`Isa::detect`]) from the CPU and capped by the `CINDER_ISA` environment
//! variable; and [`dispatch`], which runs portable work compiled for that path.

use std::sync::OnceLock;

use super::work::Vectorizable;
#[cfg(target_arch = "x86_64")]
use super::x86::{Avx2, Avx512Vnni, AvxVnni};

/// The environment variable that caps the path: one of [`Isa::name`]'s values. The
/// kernels then take the best path the CPU supports at or below it.
pub const ISA_VARIABLE: &str = "CINDER_ISA";

/// An instruction-set path of the kernels, in the order of the cap (each a superset of
/// the paths before it only in the sense of speed, not of CPU support).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, vectorized by the compiler for the build target: every target.
    Generic,
    /// AVX2: the int8 GEMM widens to i16 and multiplies with `vpmaddwd`; the output
    /// stage, Winograd, im2col, pooling and the f32 GEMM in 256-bit vectors.
    Avx2,
    /// AVX-VNNI (VEX `vpdpbusd` on ymm, client cores since Alder Lake): the int8 GEMM on
    /// 256-bit VNNI; everything else as [`Isa::Avx2`].
    AvxVnni,
    /// AVX-512 VNNI's `vpdpbusd` on ymm (EVEX, AVX512-VL): the [`Isa::AvxVnni`] kernel in
    /// the EVEX encoding, for servers where zmm code lowers the clock; everything else as
    /// [`Isa::Avx2`].
    Avx512VnniYmm,
    /// AVX-512 VNNI on zmm: the int8 GEMM (`vpdpbusd`), Winograd's i16 GEMMs
    /// (`vpdpwssd`), the depthwise and direct convolutions and the output stage;
    /// everything else as [`Isa::Avx2`].
    Avx512Vnni,
}

impl Isa {
    /// Every path, in the order of the cap.
    pub const ALL: [Self; 5] = [
        Self::Generic,
        Self::Avx2,
        Self::AvxVnni,
        Self::Avx512VnniYmm,
        Self::Avx512Vnni,
    ];

    /// The name [`ISA_VARIABLE`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Avx2 => "avx2",
            Self::AvxVnni => "avxvnni",
            Self::Avx512VnniYmm => "avx512vnni-ymm",
            Self::Avx512Vnni => "avx512vnni",
        }
    }

    /// The path named `name` (as [`Isa::name`] writes it).
    pub fn from_name(name: &str) -> Result<Self, UnknownIsa> {
        Self::ALL
            .into_iter()
            .find(|isa| isa.name() == name.trim())
            .ok_or_else(|| UnknownIsa(name.to_owned()))
    }

    /// Whether the running CPU can take this path.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return match self {
            Self::Generic => true,
            Self::Avx2 => Avx2::detect().is_some(),
            Self::AvxVnni => AvxVnni::detect().is_some(),
            Self::Avx512VnniYmm | Self::Avx512Vnni => Avx512Vnni::detect().is_some(),
        };
        #[cfg(not(target_arch = "x86_64"))]
        return self == Self::Generic;
    }

    /// The best path the CPU supports at or below `cap`.
    pub fn best_up_to(cap: Self) -> Self {
        Self::ALL
            .into_iter()
            .rev()
            .find(|isa| *isa <= cap && isa.supported())
            .unwrap_or(Self::Generic)
    }

    /// The path of this process: the best the CPU supports, capped by [`ISA_VARIABLE`]
    /// when it is set. Decided on the first call, then cached. A value that names no path
    /// is reported once on standard error and ignored.
    pub fn detect() -> Self {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let cap = match std::env::var(ISA_VARIABLE) {
                Ok(name) => Self::from_name(&name).unwrap_or_else(|e| {
                    eprintln!("cinder: {e}; using the best path of this CPU");
                    Self::Avx512Vnni
                }),
                Err(_) => Self::Avx512Vnni,
            };
            Self::best_up_to(cap)
        })
    }

    /// Whether Winograd F(2×2, 3×3) beats im2col + GEMM on this path for the 3×3
    /// convolutions it can take. Winograd saves 2.25× the multiplies but pays per tile
    /// and channel in its transforms and multiplies on i16 (`vpmaddwd` / `vpdpwssd`);
    /// with `vpdpbusd` the int8 GEMM multiplies four pairs per lane and the saving no
    /// longer covers the transforms. Measured per 16×16 image of 64 -> 128 channels, one
    /// thread, im2col + GEMM against Winograd (µs): AVX2 377 against 201, AVX-VNNI 170
    /// against 209, AVX-512 VNNI ymm 101 against 162, zmm 83 against 92.
    pub fn winograd_pays(self) -> bool {
        self <= Self::Avx2
    }

    /// Whether the direct kernel of stride-1 convolutions ([`super::direct_conv_nhwc_s8`])
    /// beats im2col + GEMM on this path for the layers it fits: it has a SIMD kernel on
    /// AVX-512 VNNI only (elsewhere it is the scalar reference). Measured on one image, one
    /// thread of a Zen 4, alternating: the reference ConvNet's conv1 (32×32×3 -> 64, 3×3,
    /// pooled sums) 10.0 µs against 27.0 for im2col + GEMM + pool, its conv2 (16×16×64 ->
    /// 128, pooled) 81.0 µs against 90.5–91.0; ResNet-20's stem (32×32×3 -> 16, no pool)
    /// 4.7 µs against 13.5. The 1×1 convolutions of mobilenetv2-tiny take it too: the whole
    /// network at batch 64, 2 threads, 6.15–6.37 ms against 6.55–6.68 with them on the GEMM.
    pub fn direct_conv_pays(self) -> bool {
        self == Self::Avx512Vnni
    }

    /// Whether a static linear layer whose weight codes fit 4 bits keeps them as nibbles
    /// too, for the batch-1 GEMV ([`crate::kernels::gemv_s4`]): on the VNNI paths. On the
    /// AVX-512 VNNI path the reference ConvNet's fc1 (8192 × 1024) took 43–47 µs on 2
    /// threads of a Zen 4 against 56–77 µs with the same codes as int8 panels; on one
    /// thread of the same CPU, alternating, the 4-bit GEMV took 0.47–0.56 of the int8
    /// GEMV's time on zmm and 0.61–0.71 on ymm (the EVEX encoding of the AVX-VNNI
    /// kernel's instructions). The nibbles add half the layer's int8 weight bytes to the
    /// plan.
    pub fn nibble_gemv_pays(self) -> bool {
        self >= Self::AvxVnni
    }

    /// The AVX2 token, when this path computes in AVX2 at least.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn avx2(self) -> Option<Avx2> {
        (self >= Self::Avx2).then(Avx2::detect).flatten()
    }

    /// The AVX-512 VNNI token, when this is the zmm path.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn avx512vnni(self) -> Option<Avx512Vnni> {
        (self == Self::Avx512Vnni)
            .then(Avx512Vnni::detect)
            .flatten()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A value of [`ISA_VARIABLE`] that names no path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{ISA_VARIABLE}={0:?} names no kernel path, expected one of generic, avx2, avxvnni, avx512vnni-ymm, avx512vnni"
)]
pub struct UnknownIsa(pub String);

/// Runs `work` compiled for the process's path: with AVX2 from [`Isa::Avx2`] up, else
/// as portable code.
pub(super) fn dispatch<V: Vectorizable>(work: V) -> V::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = Isa::detect().avx2() {
        return token.vectorize(work);
    }
    work.run()
}
