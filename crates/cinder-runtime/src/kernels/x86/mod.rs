//! x86_64 instruction-set paths, one module each; every entry point takes its module's
//! token, which only the token's `detect` creates, once the CPU is known to support it.

/// Defines a token type proving CPU support for `features`, with `detect` and
/// `vectorize` (runs portable work in a function compiled with `features`).
macro_rules! token {
    ($(#[$doc:meta])* $name:ident, [$($feature:tt),+]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub(in crate::kernels) struct $name(());

        impl $name {
            /// `Some` when the CPU has every feature (the checks are cached by the
            /// standard library).
            pub(in crate::kernels) fn detect() -> Option<Self> {
                ($(is_x86_feature_detected!($feature))&&+).then_some(Self(()))
            }

            /// Runs `work` in a function compiled with the token's features, so that its
            /// (inlined) portable code and kernels use them.
            pub(in crate::kernels) fn vectorize<V: crate::kernels::work::Vectorizable>(
                self,
                work: V,
            ) -> V::Output {
                $(#[target_feature(enable = $feature)])+
                fn run<V: crate::kernels::work::Vectorizable>(work: V) -> V::Output {
                    work.run()
                }
                // SAFETY: the token proves that the CPU has the features.
                unsafe { run(work) }
            }
        }
    };
}

/// Defines `$token::depthwise`: the shared 256-bit depthwise kernel
/// ([`ymm_depthwise::depthwise`]) with the multiply-add of `$dot`, compiled with
/// `features`, reporting the path `$isa`.
macro_rules! ymm_depthwise {
    ($token:ty, $dot:ty, $isa:expr, $features:literal) => {
        impl $token {
            /// The depthwise sums of `job` (its filter packed in blocks of 16).
            pub(in crate::kernels) fn depthwise(
                self,
                job: crate::kernels::depthwise::DepthwiseJob<'_>,
            ) -> crate::kernels::isa::Isa {
                /// # Safety
                /// The features must be available; the filter packed in blocks of 16.
                #[target_feature(enable = $features)]
                unsafe fn run(job: crate::kernels::depthwise::DepthwiseJob<'_>) {
                    // SAFETY: this function's contract.
                    unsafe { crate::kernels::x86::ymm_depthwise::depthwise::<$dot>(job) }
                }
                // SAFETY: the token proves the features; the job's operands are checked.
                unsafe { run(job) };
                $isa
            }
        }
    };
}

/// Defines `$token::gemv_s4`: the shared 256-bit 4-bit-weight GEMV
/// ([`ymm_nibbles::panel_sums`] over [`crate::kernels::nibbles::by_panels`]) with the
/// `vpdpbusd` of `$token`, compiled with `features`.
macro_rules! ymm_nibbles {
    ($token:ty, $features:literal) => {
        impl $token {
            /// [`crate::kernels::gemv_s4`]; operands checked by the caller (`a` holds
            /// exactly the depth, `a_sum` is its sum).
            pub(in crate::kernels) fn gemv_s4(
                self,
                a: &[i8],
                a_sum: i32,
                b: &crate::kernels::nibbles::PackedNibbles,
                cols: std::ops::Range<usize>,
                c: &mut [i32],
            ) {
                /// # Safety
                /// The features must be available; `panel` as `panel_sums` needs it.
                #[target_feature(enable = $features)]
                unsafe fn run(
                    whole: &[i8],
                    tail: &[i8; crate::kernels::nibbles::NIBBLE_DEPTH],
                    panel: &[crate::kernels::nibbles::NibbleRow],
                    a_sum: i32,
                ) -> [i32; crate::kernels::pack::NR] {
                    // SAFETY: this function's contract.
                    unsafe {
                        crate::kernels::x86::ymm_nibbles::panel_sums::<$token>(
                            whole, tail, panel, a_sum,
                        )
                    }
                }
                crate::kernels::nibbles::by_panels(a, b, cols, c, |whole, tail, panel| {
                    // SAFETY: the token proves the features; `by_panels` passes a panel
                    // with a row per 8 codes of `whole`, plus one for a partial row.
                    unsafe { run(whole, tail, panel, a_sum) }
                });
            }
        }
    };
}

mod avx2;
mod avx512vnni;
mod avxvnni;
mod channel_lanes;
mod ymm;
mod ymm_depthwise;
mod ymm_nibbles;

pub(super) use avx2::Avx2;
pub(super) use avx512vnni::Avx512Vnni;
pub(super) use avxvnni::AvxVnni;
