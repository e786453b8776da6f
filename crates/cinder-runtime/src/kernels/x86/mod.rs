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

mod avx2;
mod avx512vnni;
mod avxvnni;
mod ymm;

pub(super) use avx2::Avx2;
pub(super) use avx512vnni::Avx512Vnni;
pub(super) use avxvnni::AvxVnni;
