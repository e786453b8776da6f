//! Portable work that each instruction-set module compiles a second time with its target
//! features (see [`super::isa::dispatch`]).

/// A unit of portable work that the compiler vectorizes. Implementations mark `run`
/// `#[inline(always)]`, so that it is inlined into (and compiled with the features of) an
/// instruction set's entry point.
pub(super) trait Vectorizable {
    type Output;
    fn run(self) -> Self::Output;
}
